"""User-level differential privacy for federated rounds: clipping, Gaussian noise on the sum of
the sampled clients' contributions, and an accountant (Google's ``dp-accounting``, RDP).

What one client contributes to a round depends on the payload its algorithm uploads
(:mod:`~fedtune.privacy.payloads`): FedIT's adapter update (every adapter weight), FedKSeed's
per-seed sums of its scalars (K numbers). The mechanism (:mod:`~fedtune.privacy.mechanism`) is
the same for both: clip each contribution to L2 norm C, add N(0, (z C)^2) to every coordinate
of the sum, divide by the number of sampled clients; :mod:`~fedtune.privacy.accountant` turns
the released rounds into epsilon. The server strategy that applies it is
:mod:`fedtune.strategies.dp`; this package knows nothing of Flower. (Import the modules
directly: this file stays empty so the config can import its section without numpy's
accounting stack.)
"""
