from peerlearn.cli import entry

entry()
