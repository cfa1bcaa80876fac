"""Data: the ``data`` config section (``config``); raw records of a file or hub dataset
(``readers``); records -> instruction examples (``instructions``, of :class:`Example` in
``example``) or preference pairs (``preference``); the two record types (``records``); what a
``data`` / ``eval-data`` value names (``sources``: files, hub datasets, Natural Instructions and
FedIT folders); who gets which records (``split``: the one split into the server's held-out set
and each client's training and held-out sides), with the ``partition`` partitioners; the
built-in synthetic tasks (``synthetic``); the prompt template (``template``); tokenization
(``tokenize`` for examples, ``pairs`` for preference pairs)."""
