"""Models: the ``model`` config section (``config``) and loading a Hugging Face id, a local
folder or the built-in ``tiny`` preset (``loading``)."""
