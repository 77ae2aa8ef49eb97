"""relzoo.fileio: the safetensors parser that decides what a push uploads as weights."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from relzoo.fileio import check_safetensors_file


def _raw(path, header: dict, data: bytes):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_real_files_pass_with_their_metadata(tmp_path):
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.bfloat16), "e": torch.zeros(0)},
              tmp_path / "w.safetensors", metadata={"format": "pt"})
    assert check_safetensors_file(tmp_path / "w.safetensors") == {"format": "pt"}


@pytest.mark.parametrize("header, data, why", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 9, "but the file has"),      # trailing
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 12]}}, b"\0" * 12, "spans 4 bytes, not 8"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, "a gap or an overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "a gap or an overlap"),
    ({"a": {"dtype": "PY_OBJECT", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "has shape"),
    ({"a": "os.system('x')"}, b"", "is not a tensor"),
    ({"__metadata__": {"k": {"nested": 1}}}, b"", "must map strings to strings"),
])
def test_anything_else_is_named(tmp_path, header, data, why):
    path = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=f"bad.safetensors' is not a safetensors file of tensors: .*{why}"):
        check_safetensors_file(path)


def test_not_json_and_short_files(tmp_path):
    (tmp_path / "key.safetensors").write_text("-----BEGIN PRIVATE KEY-----\nMII\n")
    with pytest.raises(ValueError, match="does not fit the file"):
        check_safetensors_file(tmp_path / "key.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="shorter than the 8-byte header length"):
        check_safetensors_file(tmp_path / "tiny.safetensors")
    path = tmp_path / "list.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        check_safetensors_file(path)
