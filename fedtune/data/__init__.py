"""Data: reading, splitting among clients, and tokenizing examples and preference pairs.

- ``config``: the ``data`` config section.
- ``readers``: raw records of one data file or hub dataset, with their locations.
- ``fields``: values of a raw record's fields (dotted paths, text, chat turns in the
  OpenAI and ShareGPT spellings).
- ``instructions`` / ``preference``: raw records -> :class:`Example` (``example``) /
  ``PreferenceExample``; ``natural_instructions``: Natural Instructions task files and rules.
- ``records``: the two record types (examples, pairs): how each is read and labelled.
- ``sources``: what a ``data`` / ``eval-data`` value names, and the records it holds.
- ``split``: the one split into the server's held-out set and each client's training and
  held-out sides; ``partition``: the partitioners it uses.
- ``synthetic``: the built-in tasks; ``template``: the prompt template; ``tokenize`` /
  ``pairs``: tokenized examples / pairs.
"""
