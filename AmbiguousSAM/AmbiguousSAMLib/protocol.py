"""The JSON messages between the inference server and its clients: a lesion region in, a lesion result out.

Standard library and numpy only, so Slicer's GUI process can speak it before PyTorch is installed. An array
travels as base64 of its raw little-endian bytes with its dtype and shape; bool arrays are packed eight to a
byte (np.packbits), so K candidate masks cost an eighth of their size. Decoding checks every field and that
an array's bytes match its shape, so a malformed message is refused with the reason and never reaches the
model; the round trip is exact (same dtypes, same values, same tuples).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ServerError
from .lesion import LesionResult
from .region import LesionRegion
from .review_flag import ReviewFlag

#: Bumped when a message changes incompatibly; the server reports it in /v1/health. 2: a result carries the
#: candidates' expected quality and the lesion's review flag.
PROTOCOL_VERSION = 2
#: The dtypes an array may have on the wire: those a CT or a result holds (no objects, no complex numbers).
ARRAY_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                          "float16", "float32", "float64"})


class ProtocolError(ServerError):
    """A message does not follow the protocol: a field is missing or has the wrong type, or an array's bytes do
    not match its shape."""


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: the server needs no token there, and a client there talks to
    a server it started itself."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: str | Path) -> str:
    """The token in a token file, for the server (`--token-file`) and its clients (Slicer's Token file) alike."""
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise ServerError(f"Cannot read the server token file '{path}' ({error.strerror or error}). It holds the "
                          "token the server was started with (--token-file); in Slicer, set 'Token file' to a copy "
                          "of it.") from None
    if not token:
        raise ServerError(f"The server token file '{path}' is empty; put a long random string in it, e.g. "
                          "python -c \"import secrets; print(secrets.token_urlsafe(32))\" > token.txt, and give "
                          "the same file to the server (--token-file) and its clients.")
    return token


def encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    if array.dtype.name not in ARRAY_DTYPES:
        raise ProtocolError(f"Arrays of dtype {array.dtype} cannot be sent; use one of {sorted(ARRAY_DTYPES)}.")
    if array.dtype == bool:
        raw = np.packbits(array.reshape(-1)).tobytes()
    else:
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": base64.b64encode(raw).decode("ascii")}


def decode_array(message: Any, where: str) -> np.ndarray:
    """The array of an encode_array message; `where` names the field in error messages."""
    name = _field(message, "dtype", str, where)
    if name not in ARRAY_DTYPES:
        raise ProtocolError(f"'{where}.dtype' is {name!r}; expected one of {sorted(ARRAY_DTYPES)}.")
    shape = _integers(message, "shape", where, minimum=0)
    try:
        raw = base64.b64decode(_field(message, "data", str, where), validate=True)
    except binascii.Error as error:
        raise ProtocolError(f"'{where}.data' is not base64 ({error}).") from None
    count = math.prod(shape)
    dtype = np.dtype(name)
    expected = (count + 7) // 8 if dtype == bool else count * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"'{where}.data' holds {len(raw)} bytes, but a {dtype} array of shape {tuple(shape)} "
                            f"needs {expected}.")
    if dtype == bool:
        flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count).astype(bool)
    else:
        flat = np.frombuffer(bytearray(raw), dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    return flat.reshape(shape)


def encode_region(region: LesionRegion) -> dict:
    return {"voxels": encode_array(region.voxels), "offset": list(region.offset),
            "volume_shape": list(region.volume_shape), "spacing": list(region.spacing), "box": list(region.box),
            "slice_k": region.slice_k, "fill": region.fill}


def decode_region(message: Any) -> LesionRegion:
    """The region of an encode_region message; its content is checked by region.check_region, not here."""
    where = "region"
    return LesionRegion(voxels=decode_array(_field(message, "voxels", dict, where), f"{where}.voxels"),
                        offset=tuple(_integers(message, "offset", where, length=3)),
                        volume_shape=tuple(_integers(message, "volume_shape", where, length=3)),
                        spacing=tuple(_numbers(message, "spacing", where, length=3)),
                        box=tuple(_numbers(message, "box", where, length=4)),
                        slice_k=_integer(message, "slice_k", where),
                        fill=float(_field(message, "fill", (int, float), where)))


def encode_result(result: LesionResult) -> dict:
    return {"candidates": encode_array(result.candidates), "consensus": encode_array(result.consensus),
            "mean_probability": encode_array(result.mean_probability), "entropy": encode_array(result.entropy),
            "mutual_information": encode_array(result.mutual_information), "scores": encode_array(result.scores),
            "offset": list(result.offset), "volume_shape": list(result.volume_shape),
            "info": json.loads(json.dumps(result.info, default=_plain)),
            "quality": None if result.quality is None else encode_array(result.quality),
            "review": result.review.as_dict()}


def decode_result(message: Any) -> LesionResult:
    where = "result"
    arrays = {name: decode_array(_field(message, name, dict, where), f"{where}.{name}")
              for name in ("candidates", "consensus", "mean_probability", "entropy", "mutual_information", "scores")}
    quality = _field(message, "quality", (dict, type(None)), where)
    if quality is not None:
        quality = decode_array(quality, f"{where}.quality")
        if quality.shape != arrays["scores"].shape:
            raise ProtocolError(f"'{where}.quality' has shape {quality.shape}; it needs one value per candidate, "
                                f"{arrays['scores'].shape}.")
    try:
        review = ReviewFlag.from_dict(_field(message, "review", dict, where))
    except ValueError as error:
        raise ProtocolError(f"'{where}.review' is not a review flag: {error}.") from None
    return LesionResult(**arrays, offset=tuple(_integers(message, "offset", where, length=3)),
                        volume_shape=tuple(_integers(message, "volume_shape", where, length=3)),
                        info=_field(message, "info", dict, where), quality=quality, review=review)


def encode_job(region: LesionRegion, samples: int, seed: int) -> dict:
    """The body of POST /v1/jobs."""
    return {"region": encode_region(region), "samples": int(samples), "seed": int(seed)}


def decode_job(message: Any) -> tuple[LesionRegion, int, int]:
    """(region, samples, seed) of a POST /v1/jobs body; the numbers' ranges are checked with the region, by
    limits.py's rules (the same as in process)."""
    samples, seed = _integer(message, "samples", "job"), _integer(message, "seed", "job")
    return decode_region(_field(message, "region", dict, "job")), samples, seed


def _plain(value: Any) -> Any:
    """json.dumps' fallback for the numpy values a result's provenance may hold."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot be sent in a result's info")


def _field(message: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(message, dict):
        raise ProtocolError(f"'{where}' must be a JSON object, not {type(message).__name__}.")
    if key not in message:
        raise ProtocolError(f"'{where}.{key}' is missing.")
    return _checked(message[key], kind, f"{where}.{key}")


def _checked(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    """`value` if it has JSON type `kind` (true/false never counts as a number)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"'{name}' must be {wanted}, not {type(value).__name__}.")
    return value


def _integer(message: Any, key: str, where: str) -> int:
    return _field(message, key, int, where)


def _values(message: Any, key: str, where: str, kind: type | tuple[type, ...], length: int | None) -> list:
    values = _field(message, key, list, where)
    if length is not None and len(values) != length:
        raise ProtocolError(f"'{where}.{key}' must hold {length} values, not {len(values)}.")
    return [_checked(value, kind, f"{where}.{key}[{index}]") for index, value in enumerate(values)]


def _integers(message: Any, key: str, where: str, length: int | None = None, minimum: int | None = None) -> list[int]:
    values = _values(message, key, where, int, length)
    if minimum is not None and any(value < minimum for value in values):
        raise ProtocolError(f"'{where}.{key}' must hold integers >= {minimum}, not {values}.")
    return values


def _numbers(message: Any, key: str, where: str, length: int) -> list[float]:
    return [float(value) for value in _values(message, key, where, (int, float), length)]
