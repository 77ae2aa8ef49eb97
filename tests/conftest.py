"""Tests never touch the network and never write outside tmp folders."""
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="relzoo-test-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
