"""SecAgg+ secure aggregation as a pure library: the server learns only the sum of the clients'
vectors, even when some clients drop out (Bonawitz et al., CCS 2017; Bell et al., CCS 2020).

:mod:`~fedtune.secagg.crypto` holds the primitives (X25519, HKDF, AES-GCM, Shamir),
:mod:`~fedtune.secagg.masking` the uint32 ring arithmetic, the PRG and quantisation, and
:mod:`~fedtune.secagg.protocol` the protocol itself as functions of (state, message) -> reply,
with no network. Nothing here knows Flower. (Import the modules directly: this file stays empty
so importing the package costs nothing.)
"""
