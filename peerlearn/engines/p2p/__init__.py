"""The peer-to-peer engine (``--engine p2p``): a swarm of processes that find each other through hivemind's
DHT and exchange models over libp2p streams (encrypted, each peer's id its public key), on wall-clock time.

:mod:`~peerlearn.engines.p2p.swarm` is a peer's place in the swarm (admission, roster, messages),
:mod:`~peerlearn.engines.p2p.comm` the gossip primitives with a deadline per exchange,
:mod:`~peerlearn.engines.p2p.peer` the peer's rounds and rows, :mod:`~peerlearn.engines.p2p.launch` a swarm
on this machine (``--nproc K``), :mod:`~peerlearn.engines.p2p.gossip` and
:mod:`~peerlearn.engines.p2p.async_net` the asynchronous algorithms, :mod:`~peerlearn.engines.p2p.churn` a
churn scenario (``--churn FILE``). hivemind is the ``p2p`` extra: only these modules import it.
"""
