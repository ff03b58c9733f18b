"""The ``cllm`` command line."""
