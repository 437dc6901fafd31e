import json
import struct

import pytest
import zstandard

from appliance.control.mapframes import MAX_FRAME, MapFrameError, MapFrameReader, encode_frame


def test_frame_is_little_endian_length_and_zstd():
    frame = encode_frame({"KeepAlive": True}, compress=True)
    (n,) = struct.unpack("<I", frame[:4])
    assert n == len(frame) - 4
    body = zstandard.ZstdDecompressor().decompressobj().decompress(frame[4:])
    assert json.loads(body) == {"KeepAlive": True}


def test_uncompressed_frame():
    frame = encode_frame({"a": 1}, compress=False)
    assert frame == struct.pack("<I", 7) + b'{"a":1}'


def test_reader_whole_bytewise_and_batched():
    msgs = [{"n": i, "pad": "x" * (i * 100)} for i in range(5)]
    wire = b"".join(encode_frame(m, True) for m in msgs)
    assert MapFrameReader(True).receive_data(wire) == msgs
    r = MapFrameReader(True)
    got = []
    for i in range(len(wire)):
        got += r.receive_data(wire[i : i + 1])
    assert got == msgs


def test_reader_refuses_oversized_header():
    with pytest.raises(MapFrameError):
        MapFrameReader(True).receive_data(struct.pack("<I", MAX_FRAME + 1))


def test_raw_json_values_are_spliced_as_they_are():
    from appliance.control.mapframes import RawJSON

    msg = {"Node": {"ID": 1}, "Peers": RawJSON('[{"ID":2},{"ID":3}]'), "Domain": "x"}
    (frame,) = [encode_frame(msg, compress=True)]
    assert MapFrameReader(True).receive_data(frame) == [
        {"Node": {"ID": 1}, "Peers": [{"ID": 2}, {"ID": 3}], "Domain": "x"}
    ]
