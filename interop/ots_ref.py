"""Independent Python client of the omega-tv-sync wire format, written from the
documents only (docs/wire-format.md, docs/protocol.md, docs/codec.md).

Standard library only. Everything here works on ``bytes`` and plain Python
values; the live client is in ``live.py``.

Contents:
  * postcard primitives (varints, zigzag, f32, strings, options)
  * frames (header, CRC-32, kinds, flags) and every record kind
  * the snapshot body (layout 2; layout 1 read only)
  * request signing (HMAC-SHA256 over the canonical message), device keys, TLS PSK
  * codebook blobs (version 2), quantise / reconstruct, rANS encode / decode
"""

import hashlib
import hmac
import math
import struct
import zlib

# ---------------------------------------------------------------------------
# Constants (docs/wire-format.md, README.md)

MAGIC = b"OT"
FORMAT_VERSION = 1
KIND_UPLOAD, KIND_DOWNLOAD, KIND_SNAPSHOT = 1, 2, 3
FLAG_ZSTD_BODY = 0x01
FLAG_ACCEPT_ZSTD = 0x02
OVERHEAD = 13
DIM = 384
MAX_CODE_LEN = 1686
MAX_UPLOAD_PATTERNS = 64
MAX_UPLOAD_FRAME = 111277
MIN_DOWNLOAD_FRAME = 2048
MAX_DOWNLOAD_FRAME = 1048576
SYNC_PATH = "/api/v1/sync"

TAG_UPLOAD_HEAD = 0x01
TAG_PATTERN_UPDATE = 0x02
TAG_PATTERN_REMOVAL = 0x03
TAG_DOWNLOAD_HEAD = 0x10
TAG_ACK = 0x11
TAG_CONFLICT = 0x12
TAG_GLOBAL_UPSERT = 0x13
TAG_GLOBAL_REMOVE = 0x14
TAG_TREND = 0x15
TAG_SNAPSHOT = 0x20

SNAPSHOT_LAYOUT_2 = 0x82
CODING_ABSOLUTE, CODING_DELTA = 0, 1


class WireError(Exception):
    """A decode failure, named by the documented error code."""

    def __init__(self, code, detail=""):
        super().__init__(code + (": " + detail if detail else ""))
        self.code = code


# ---------------------------------------------------------------------------
# f32 helpers: Python floats are binary64; every f32 operation is done in
# binary64 and rounded to binary32, which is exact for + - * (one rounding of
# a result that binary64 holds exactly or with > 2*24+2 bits).


def f32(x):
    """Round a Python float to the nearest binary32 value."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_bits(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


# ---------------------------------------------------------------------------
# postcard


class Writer:
    def __init__(self):
        self.buf = bytearray()

    def u8(self, v):
        if not 0 <= v <= 0xFF:
            raise ValueError("u8 out of range")
        self.buf.append(v)

    def bool(self, v):
        self.buf.append(1 if v else 0)

    def varint(self, v, bits):
        if not 0 <= v < (1 << bits):
            raise ValueError("u%d out of range: %r" % (bits, v))
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return

    def u16(self, v):
        self.varint(v, 16)

    def u32(self, v):
        self.varint(v, 32)

    def u64(self, v):
        self.varint(v, 64)

    def i16(self, v):
        if not -32768 <= v <= 32767:
            raise ValueError("i16 out of range")
        self.varint(zigzag(v), 16)

    def f32(self, v):
        self.buf += struct.pack("<f", v)

    def bytes_(self, b):
        self.u64(len(b))  # postcard's length is a usize varint
        self.buf += b

    def str_(self, s):
        self.bytes_(s.encode("ascii"))

    def raw(self, b):
        self.buf += b


class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self):
        return self.end - self.pos

    def take(self, n):
        if self.pos + n > self.end:
            raise WireError("truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(b)

    def u8(self):
        return self.take(1)[0]

    def bool(self):
        b = self.u8()
        if b > 1:
            raise WireError("malformed", "bool byte %d" % b)
        return b == 1

    def varint(self, bits):
        maxlen = (bits + 6) // 7
        v = 0
        for i in range(maxlen):
            b = self.u8()
            v |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if v >= (1 << bits):
                    raise WireError("malformed", "varint over u%d" % bits)
                return v
        raise WireError("malformed", "varint too long")

    def u16(self):
        return self.varint(16)

    def u32(self):
        return self.varint(32)

    def u64(self):
        return self.varint(64)

    def i16(self):
        return unzigzag(self.varint(16))

    def f32(self):
        return struct.unpack("<f", self.take(4))[0]

    def bytes_(self):
        n = self.u64()
        return self.take(n)

    def str_(self):
        return self.bytes_().decode("latin-1")


def zigzag(v):
    return (v << 1) ^ (v >> 63) if v < 0 else v << 1


def unzigzag(u):
    return (u >> 1) ^ -(u & 1)


# ---------------------------------------------------------------------------
# Field bounds


def check_ident(s, maxlen):
    b = s.encode("latin-1")
    if not b:
        raise WireError("empty_id")
    if len(b) > maxlen:
        raise WireError("string_too_long")
    if any(c < 0x21 or c > 0x7E for c in b):
        raise WireError("invalid_char")


def check_rate(r):
    if not math.isfinite(r):
        raise WireError("non_finite")
    if not 0.0 <= r <= 1.0:
        raise WireError("rate_out_of_range")


def check_code(c):
    if not 1 <= len(c) <= MAX_CODE_LEN:
        raise WireError("oversize")


def check_region(r):
    if len(r) != 2 or not all("A" <= ch <= "Z" for ch in r):
        raise WireError("invalid_region")


# ---------------------------------------------------------------------------
# Records. A record is a dict with "type" and its fields (names as in
# wire-format.md). Codes are bytes.


def write_record(w, r):
    t = r["type"]
    if t == "UploadHead":
        w.u8(TAG_UPLOAD_HEAD)
        w.u64(r["seq"])
        w.u64(r["since"])
        caps = r["caps"]
        w.u16(caps["max_globals"])
        w.u16(caps["max_trends"])
        w.u32(caps["max_bytes"])
    elif t == "PatternUpdate":
        w.u8(TAG_PATTERN_UPDATE)
        w.str_(r["id"])
        w.u32(r["base_rev"])
        w.f32(r["success_rate"])
        w.u32(r["sample_count"])
        w.str_(r["category"])
        w.u32(r["coding"])
        w.bytes_(r["code"])
    elif t == "PatternRemoval":
        w.u8(TAG_PATTERN_REMOVAL)
        w.str_(r["id"])
        w.u32(r["base_rev"])
    elif t == "DownloadHead":
        w.u8(TAG_DOWNLOAD_HEAD)
        w.u64(r["seq"])
        w.u64(r["global_version"])
        w.bool(r["more"])
        w.bool(r["reset"])
        w.u32(r["next_sync_s"])
    elif t == "Ack":
        w.u8(TAG_ACK)
        w.str_(r["id"])
        w.u32(r["revision"])
    elif t == "Conflict":
        w.u8(TAG_CONFLICT)
        w.str_(r["id"])
        w.u32(r["server_rev"])
        st = r["state"]
        if st is None:
            w.u8(0)
        else:
            w.u8(1)
            w.f32(st["success_rate"])
            w.u32(st["sample_count"])
            w.str_(st["category"])
            w.bytes_(st["code"])
    elif t == "GlobalUpsert":
        w.u8(TAG_GLOBAL_UPSERT)
        w.u32(r["id"])
        w.u64(r["version"])
        w.f32(r["success_rate"])
        w.u32(r["sample_count"])
        w.u32(r["contributors"])
        w.str_(r["category"])
        w.bytes_(r["code"])
    elif t == "GlobalRemove":
        w.u8(TAG_GLOBAL_REMOVE)
        w.u32(r["id"])
        w.u64(r["version"])
    elif t == "Trend":
        w.u8(TAG_TREND)
        w.u64(r["version"])
        w.str_(r["content_id"])
        w.f32(r["score"])
        w.raw(r["region"].encode("ascii"))
        w.str_(r["category"])
        w.u64(r["calculated_at"])
    else:
        raise ValueError("unknown record type " + t)


def _id(rd, maxlen=16):
    s = rd.str_()
    check_ident(s, maxlen)
    return s


def _rate(rd):
    r = rd.f32()
    check_rate(r)
    return r


def _code(rd):
    c = rd.bytes_()
    check_code(c)
    return c


def read_record(rd, tag):
    if tag == TAG_UPLOAD_HEAD:
        return {"type": "UploadHead", "seq": rd.u64(), "since": rd.u64(),
                "caps": {"max_globals": rd.u16(), "max_trends": rd.u16(), "max_bytes": rd.u32()}}
    if tag == TAG_PATTERN_UPDATE:
        r = {"type": "PatternUpdate", "id": _id(rd), "base_rev": rd.u32(), "success_rate": _rate(rd),
             "sample_count": rd.u32(), "category": _id(rd)}
        coding = rd.u32()
        if coding > 1:
            raise WireError("malformed", "coding %d" % coding)
        r["coding"] = coding
        r["code"] = _code(rd)
        return r
    if tag == TAG_PATTERN_REMOVAL:
        return {"type": "PatternRemoval", "id": _id(rd), "base_rev": rd.u32()}
    if tag == TAG_DOWNLOAD_HEAD:
        return {"type": "DownloadHead", "seq": rd.u64(), "global_version": rd.u64(), "more": rd.bool(),
                "reset": rd.bool(), "next_sync_s": rd.u32()}
    if tag == TAG_ACK:
        return {"type": "Ack", "id": _id(rd), "revision": rd.u32()}
    if tag == TAG_CONFLICT:
        r = {"type": "Conflict", "id": _id(rd), "server_rev": rd.u32()}
        o = rd.u8()
        if o == 0:
            r["state"] = None
        elif o == 1:
            r["state"] = {"success_rate": _rate(rd), "sample_count": rd.u32(), "category": _id(rd),
                          "code": _code(rd)}
        else:
            raise WireError("malformed", "option byte %d" % o)
        return r
    if tag == TAG_GLOBAL_UPSERT:
        return {"type": "GlobalUpsert", "id": rd.u32(), "version": rd.u64(), "success_rate": _rate(rd),
                "sample_count": rd.u32(), "contributors": rd.u32(), "category": _id(rd), "code": _code(rd)}
    if tag == TAG_GLOBAL_REMOVE:
        return {"type": "GlobalRemove", "id": rd.u32(), "version": rd.u64()}
    if tag == TAG_TREND:
        r = {"type": "Trend", "version": rd.u64(), "content_id": _id(rd, 64)}
        s = rd.f32()
        if not math.isfinite(s):
            raise WireError("non_finite")
        if not 0.0 <= s <= 1e6:
            raise WireError("rate_out_of_range", "trend score")  # code not documented
        r["score"] = s
        reg = rd.take(2).decode("latin-1")
        check_region(reg)
        r["region"] = reg
        r["category"] = _id(rd)
        r["calculated_at"] = rd.u64()
        return r
    raise WireError("unknown_kind", "tag 0x%02x" % tag)


HEAD_OF_KIND = {KIND_UPLOAD: TAG_UPLOAD_HEAD, KIND_DOWNLOAD: TAG_DOWNLOAD_HEAD, KIND_SNAPSHOT: TAG_SNAPSHOT}
BODY_TAGS = {
    KIND_UPLOAD: (TAG_PATTERN_UPDATE, TAG_PATTERN_REMOVAL),
    KIND_DOWNLOAD: (TAG_ACK, TAG_CONFLICT, TAG_GLOBAL_UPSERT, TAG_GLOBAL_REMOVE, TAG_TREND),
    KIND_SNAPSHOT: (),
}


# ---------------------------------------------------------------------------
# Frames


def frame(kind, codebook_id, body, flags=0):
    """Header + body + CRC-32 (zlib's, little-endian, over header and body)."""
    head = MAGIC + bytes([FORMAT_VERSION, kind, flags]) + struct.pack("<I", codebook_id)
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def encode_frame(kind, codebook_id, records, flags=0):
    w = Writer()
    for r in records:
        write_record(w, r)
    return frame(kind, codebook_id, bytes(w.buf), flags)


def parse_header(data):
    """Checks in the documented order; returns (kind, flags, codebook_id, body)."""
    if len(data) < OVERHEAD:
        raise WireError("truncated")
    if data[0:2] != MAGIC:
        raise WireError("bad_magic")
    if data[2] != FORMAT_VERSION:
        raise WireError("unsupported_version")
    kind = data[3]
    if kind not in (KIND_UPLOAD, KIND_DOWNLOAD, KIND_SNAPSHOT):
        raise WireError("unknown_kind")
    flags = data[4]
    if flags & 0xFC:
        raise WireError("bad_flags")
    crc = struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise WireError("checksum")
    cb = struct.unpack("<I", data[5:9])[0]
    return kind, flags, cb, bytes(data[9:-4])


def zstd_decompress(body, limit):
    """The standard library has no zstd: use the zstd command line tool."""
    import subprocess
    p = subprocess.run(["zstd", "-d", "-c", "-q"], input=body, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       timeout=30)
    if p.returncode != 0 or len(p.stdout) > limit:
        raise WireError("decompression")
    return p.stdout


def decode_frame(data, expect_kind=None):
    """Returns {"kind", "flags", "codebook_id", "records"}."""
    kind, flags, cb, body = parse_header(data)
    if expect_kind is not None and kind != expect_kind:
        raise WireError("unknown_kind", "kind %d" % kind)
    if flags & FLAG_ZSTD_BODY:
        body = zstd_decompress(body, MAX_DOWNLOAD_FRAME if kind == KIND_DOWNLOAD else MAX_UPLOAD_FRAME)
    out = {"kind": kind, "flags": flags, "codebook_id": cb}
    if kind == KIND_SNAPSHOT:
        rd = Reader(body)
        if rd.u8() != TAG_SNAPSHOT:
            raise WireError("unknown_kind")
        out["snapshot"] = read_snapshot_body(rd)
        if rd.left():
            raise WireError("malformed", "bytes after the snapshot")
        return out
    rd = Reader(body)
    recs = []
    while rd.left():
        tag = rd.u8()
        if not recs:
            if tag != HEAD_OF_KIND[kind]:
                raise WireError("unknown_kind", "first tag 0x%02x" % tag)
        elif tag not in BODY_TAGS[kind]:
            raise WireError("unknown_kind", "tag 0x%02x" % tag)
        recs.append(read_record(rd, tag))
        if kind == KIND_UPLOAD and len(recs) - 1 > MAX_UPLOAD_PATTERNS:
            raise WireError("oversize")
    if not recs:
        raise WireError("truncated", "no head record")
    out["records"] = recs
    return out


# ---------------------------------------------------------------------------
# Snapshot (kind 3)


def write_snapshot_body(w, s):
    w.u8(TAG_SNAPSHOT)
    w.u8(SNAPSHOT_LAYOUT_2)
    w.str_(s["device_id"])
    w.u64(s["seq"])
    w.u64(s["global_version"])
    w.u64(s["auth_counter"])
    w.u16(len(s["slots"]))
    for sl in s["slots"]:
        w.str_(sl["id"])
        w.u32(sl["rev"])
        w.bool(sl["acked_valid"])
        w.f32(sl["success_rate"])
        w.u32(sl["sample_count"])
        w.str_(sl["category"])
        if len(sl["acked"]) != DIM:
            raise ValueError("acked must have %d codes" % DIM)
        for q in sl["acked"]:
            w.i16(q)


def encode_snapshot(codebook_id, s):
    w = Writer()
    write_snapshot_body(w, s)
    return frame(KIND_SNAPSHOT, codebook_id, bytes(w.buf))


def read_snapshot_body(rd):
    first = rd.data[rd.pos] if rd.left() else None
    s = {}
    if first == SNAPSHOT_LAYOUT_2:
        rd.u8()
        s["layout"] = 2
    else:
        s["layout"] = 1
    s["device_id"] = _id(rd, 64)
    s["seq"] = rd.u64()
    s["global_version"] = rd.u64()
    s["auth_counter"] = rd.u64() if s["layout"] == 2 else 0
    n = rd.u16()
    slots = []
    seen = set()
    for _ in range(n):
        sl = {"id": _id(rd), "rev": rd.u32(), "acked_valid": rd.bool(), "success_rate": _rate(rd),
              "sample_count": rd.u32(), "category": _id(rd)}
        sl["acked"] = [rd.i16() for _ in range(DIM)]
        if sl["id"] in seen:
            raise WireError("malformed", "duplicate slot id")
        seen.add(sl["id"])
        slots.append(sl)
    s["slots"] = slots
    return s


# ---------------------------------------------------------------------------
# Authentication (wire-format.md#authentication)

AUTH_SCHEME = "OTS1-HMAC-SHA256"


def canonical_message(method, path, device_id, counter, body):
    def lp(b):
        return struct.pack(">H", len(b)) + b

    return (b"OTS1" + lp(method.encode()) + lp(path.encode()) + lp(device_id.encode())
            + struct.pack(">Q", counter) + hashlib.sha256(body).digest())


def sign(key, method, path, device_id, counter, body):
    return hmac.new(key, canonical_message(method, path, device_id, counter, body), hashlib.sha256).hexdigest()


def authorization(key, method, path, device_id, counter, body):
    return "%s counter=%d,sig=%s" % (AUTH_SCHEME, counter, sign(key, method, path, device_id, counter, body))


def sign_response(key, counter, status, body):
    """X-OTS-Signature of an answer (wire-format.md, "Signed responses")."""
    msg = b"OTS1resp" + struct.pack(">QH", counter, status) + hashlib.sha256(body).digest()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def parse_authorization(value):
    """Strict form; returns (counter, sig bytes) or raises WireError('malformed_auth')."""
    import re
    m = re.fullmatch(r"OTS1-HMAC-SHA256 counter=([0-9]{1,20}),sig=([0-9a-fA-F]{64})", value)
    if not m or int(m.group(1)) >= 1 << 64:
        raise WireError("malformed_auth")
    return int(m.group(1)), bytes.fromhex(m.group(2))


def device_key(master_secret, generation, device_id):
    return hmac.new(master_secret, b"OTS1 device key" + struct.pack(">I", generation) + device_id.encode(),
                    hashlib.sha256).digest()


def tls_psk(key):
    return hmac.new(key, b"OTS1 tls-psk", hashlib.sha256).digest()


# ---------------------------------------------------------------------------
# Codebook blob (codec.md, "Blob format (version 2)")


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


class Codebook:
    def __init__(self, blob):
        b = bytes(blob)
        if len(b) < 5396 or b[0:4] != b"OTCB":
            raise WireError("bad_codebook", "magic/length")
        if b[4] != 2:
            raise WireError("bad_codebook", "version")
        flags = b[5]
        if flags & 0xFE:
            raise WireError("bad_codebook", "flags")
        self.has_basis = bool(flags & 1)
        (dim,) = struct.unpack("<H", b[6:8])
        if dim != DIM:
            raise WireError("bad_codebook", "dimension")
        (self.id,) = struct.unpack("<I", b[8:12])
        if fnv1a32(b[:8] + b"\0\0\0\0" + b[12:]) != self.id:
            raise WireError("bad_codebook", "id")
        self.prob_bits = b[12]
        if self.prob_bits != 14:
            raise WireError("bad_codebook", "probability bits")
        self.H, self.P, self.Q, self.T, self.C = b[13], b[14], b[15], b[16], b[17]
        (self.base,) = struct.unpack("<b", b[18:19])
        if not 1 <= self.H <= 64 or self.Q < 1 or self.T < 1 or not 1 <= self.C <= 16 or b[19] != 0:
            raise WireError("bad_codebook", "parameters")
        if self.T - 1 >= self.P and (self.T - 1 - self.P) // self.Q > 12:
            raise WireError("bad_codebook", "raw bits")
        self.mu = list(struct.unpack("<384f", b[20:1556]))
        self.enc_mul = list(struct.unpack("<384f", b[1556:3092]))
        self.dec_mul = list(struct.unpack("<384f", b[3092:4628]))
        for v in self.mu + self.enc_mul + self.dec_mul:
            if not math.isfinite(v):
                raise WireError("bad_codebook", "non-finite")
        if any(v <= 0 for v in self.enc_mul + self.dec_mul):
            raise WireError("bad_codebook", "multiplier <= 0")
        if any(abs(v) > 1.0 for v in self.mu):
            raise WireError("bad_codebook", "|mean| > 1")
        if any(v > 4.0 for v in self.dec_mul):
            raise WireError("bad_codebook", "dec_mul > 4")
        self.abs_index = list(b[4628:5012])
        self.delta_index = list(b[5012:5396])
        if any(i >= self.T for i in self.abs_index + self.delta_index):
            raise WireError("bad_codebook", "index >= T")
        nsym = 2 * self.H + 1
        nent = nsym + 1
        nphys = self.P + self.Q
        off = 5396
        self.cum = []  # [family][physical] -> list of nent cumulative frequencies
        for _fam in range(2):
            fam = []
            for _t in range(nphys):
                c = list(struct.unpack("<%dH" % nent, b[off:off + 2 * nent]))
                off += 2 * nent
                if c[0] != 0 or c[-1] != 1 << self.prob_bits or any(c[i] >= c[i + 1] for i in range(nsym)):
                    raise WireError("bad_codebook", "table")
                fam.append(c)
            self.cum.append(fam)
        # Symbol lookup per table: slot -> symbol.
        self.lookup = []
        for fam in self.cum:
            lf = []
            for c in fam:
                lut = bytearray(1 << self.prob_bits)
                for s in range(nsym):
                    lut[c[s]:c[s + 1]] = bytes([s]) * (c[s + 1] - c[s])
                lf.append(bytes(lut))
            self.lookup.append(lf)
        if self.has_basis:
            n = DIM * DIM * 2
            if len(b) != off + n:
                raise WireError("bad_codebook", "length")
            flat = struct.unpack("<%dh" % (DIM * DIM), b[off:off + n])
            self.basis = [list(flat[j * DIM:(j + 1) * DIM]) for j in range(DIM)]
        else:
            if len(b) != off:
                raise WireError("bad_codebook", "length")
            self.basis = None

    # Table selection ------------------------------------------------------

    def table(self, family, j, cls):
        """(physical table, raw bits) of component j in class cls."""
        idx = (self.abs_index if family == 0 else self.delta_index)[j]
        t = min(max(idx + self.base + cls, 0), self.T - 1)
        if t < self.P:
            return t, 0
        return self.P + (t - self.P) % self.Q, (t - self.P) // self.Q

    # Quantise / reconstruct -------------------------------------------------

    def quantize(self, x):
        """Embedding (384 floats, read as f32) -> 384 codes (codec.md, "Quantisation").

        With a basis: r_d = round((x_d - mu_d) * 2^14) (f32 difference, halves
        away from zero, saturated to +-32767); per component j the pair sums
        r_2k*B[j][2k] + r_2k+1*B[j][2k+1] are exact integers, converted to f32
        and added into four f32 accumulators, pair k into accumulator k mod 4
        (k = 0..191 in order), which are combined as (a0 + a1) + (a2 + a3);
        y_j = that sum * enc_mul_j * 2^-14 in f32; q_j = round(y_j), halves away
        from zero, saturated to i16. The accumulator assignment and combination
        order are this implementation's reading of "four f32 accumulators in a
        fixed order": the vectors do not decide them (GAPS.md, "Codec format 2").
        Without a basis: q_j = round((x_j - mu_j) * enc_mul_j) in f32.
        """
        xs = [f32(f32(v) - m) for v, m in zip(x, self.mu)]
        out = []
        if self.basis is None:
            for j in range(DIM):
                out.append(_sat16(_round_half_away(f32(xs[j] * self.enc_mul[j]))))
            return out
        r = [max(-32767, min(32767, _round_half_away(f32(v * 16384.0)))) for v in xs]
        for j in range(DIM):
            row = self.basis[j]
            acc = [0.0, 0.0, 0.0, 0.0]
            for k in range(DIM // 2):
                d = 2 * k
                acc[k & 3] = f32(acc[k & 3] + f32(float(r[d] * row[d] + r[d + 1] * row[d + 1])))
            t = f32(f32(acc[0] + acc[1]) + f32(acc[2] + acc[3]))
            y = f32(f32(t * self.enc_mul[j]) * (1.0 / 16384.0))
            out.append(_sat16(_round_half_away(y)))
        return out

    def reconstruct(self, codes):
        """Codes -> unit embedding: normalize(mu + sum_j q_j * dec_mul_j * B[j])."""
        if self.basis is None:
            x = [m + q * dm for m, q, dm in zip(self.mu, codes, self.dec_mul)]
        else:
            x = list(self.mu)
            for j in range(DIM):
                c = codes[j] * self.dec_mul[j]
                if c:
                    row = self.basis[j]
                    for d in range(DIM):
                        x[d] += c * row[d]
        n = math.sqrt(sum(v * v for v in x))
        return [v / n for v in x] if n > 0 else x

    # Entropy coding -------------------------------------------------------

    def _symbols(self, vals, family, cls):
        """The stream as a list of (kind, a, b): ('sym', table, symbol), ('raw', value, bits), or
        ('low', value, bits) for the raw low bits of a table-coded component."""
        H = self.H
        esc = 2 * H
        out = [("raw", cls, 4)]
        for j, v in enumerate(vals):
            phys, b = self.table(family, j, cls)
            h = (v + (1 << (b - 1))) >> b if b else v
            if -H <= h < H:
                out.append(("sym", phys, h + H))
                if b:
                    out.append(("low", (v + (1 << (b - 1))) & ((1 << b) - 1), b))
            else:
                out.append(("sym", phys, esc))
                z = zigzag(v)
                n = z.bit_length()
                out.append(("raw", n, 5))
                rest = z & ((1 << (n - 1)) - 1)
                lo = min(n - 1, 14)
                out.append(("raw", rest & ((1 << lo) - 1), lo))
                if n - 1 > lo:
                    out.append(("raw", rest >> lo, n - 1 - lo))
        return out

    PAYLOAD_BITS = 20

    @classmethod
    def _split_payload(cls, syms):
        """The initial-state payload (codec.md, "Stream"): walking the stream in
        decode order, each table-coded component's raw low bits go into the
        payload while they fit in 20 bits together, the first group in the
        lowest bits; from the first group that would pass 20 bits on, every
        group stays in the stream. Returns (stream symbols, payload, bits)."""
        out, p, u, open_ = [], 0, 0, True
        for kind, a, b in syms:
            if kind == "low" and open_:
                if u + b <= cls.PAYLOAD_BITS:
                    p |= a << u
                    u += b
                    continue
                open_ = False
            out.append((kind, a, b))
        return out, p, u

    def _rans_encode(self, syms, family):
        L = 1 << 23
        PB = self.prob_bits
        syms, p, _u = self._split_payload(syms)
        x = L + p
        emitted = bytearray()
        cum = self.cum[family]
        for kind, a, b in reversed(syms):
            if kind == "sym":
                c = cum[a]
                start, freq = c[b], c[b + 1] - c[b]
            else:
                if b == 0:
                    continue
                freq = 1 << (PB - b)
                start = a * freq
            xmax = ((L >> PB) << 8) * freq
            while x >= xmax:
                emitted.append(x & 0xFF)
                x >>= 8
            x = ((x // freq) << PB) + (x % freq) + start
        emitted.reverse()
        return struct.pack("<I", x) + bytes(emitted)

    # codec.md, "Class choice": the table L (about 256 * log2(1 + m/32); the
    # listed integers, not that formula rounded, which differs at m = 4, 5, 9).
    _LOG2_FRAC = [0, 11, 22, 33, 43, 53, 63, 73, 82, 91, 100, 109, 118, 126, 134, 142,
                  150, 157, 165, 172, 179, 186, 193, 200, 207, 213, 220, 226, 232, 238, 244, 250]

    @classmethod
    def _cost_256(cls, f):
        """Estimated cost in 1/256 bit of a table symbol of frequency f."""
        f = max(f, 1)
        e = f.bit_length() - 1
        m = ((f >> (e - 5)) if e >= 5 else (f << (5 - e))) & 31
        return max(0, (14 << 8) - (e * 256 + cls._LOG2_FRAC[m]))

    def class_cost(self, vals, family, cls):
        """codec.md, "Class choice": the integer cost estimate of a class (1/256
        bit): per component, the table symbol's estimate plus its raw bits (the
        payload's included) or the escape's 5 + n - 1 bits; the class's 4 bits
        not counted."""
        H = self.H
        tot = 0
        for j, v in enumerate(vals):
            phys, b = self.table(family, j, cls)
            c = self.cum[family][phys]
            h = (v + (1 << (b - 1))) >> b if b else v
            if -H <= h < H:
                tot += self._cost_256(c[h + H + 1] - c[h + H]) + 256 * b
            else:
                n = zigzag(v).bit_length()
                tot += self._cost_256(c[2 * H + 1] - c[2 * H]) + 256 * (5 + max(n - 1, 0))
        return tot

    def choose_class(self, vals, family):
        """codec.md, "Class choice": from class C div 2, step down while each
        class is strictly cheaper than the best so far; if that found none,
        step up the same way. (Until the minilm-v1 refit this file took the
        least ideal length over all classes, ties to the lowest: the same
        classes for every earlier vector, not for the refitted blob's
        +-65535 deltas; GAPS.md item 33.)"""
        mid = self.C // 2
        best, best_cost = mid, self.class_cost(vals, family, mid)
        for step in (-1, 1):
            c = mid + step
            while 0 <= c < self.C:
                k = self.class_cost(vals, family, c)
                if k >= best_cost:
                    break
                best, best_cost = c, k
                c += step
            if best != mid:
                break
        return best

    def encode(self, codes, base=None, cls=None):
        """Absolute (base None) or delta (codes - base) coded embedding."""
        if len(codes) != DIM or (base is not None and len(base) != DIM):
            raise ValueError("need %d codes" % DIM)
        if any(not -32768 <= q <= 32767 for q in codes):
            raise WireError("code_out_of_range")
        if base is None:
            family, vals = 0, list(codes)
        else:
            family, vals = 1, [q - b for q, b in zip(codes, base)]
        if cls is None:
            cls = self.choose_class(vals, family)
        out = self._rans_encode(self._symbols(vals, family, cls), family)
        if len(out) > MAX_CODE_LEN:
            raise WireError("oversize")
        return out

    def decode(self, data, base=None):
        """Coded bytes -> 384 codes (absolute, or base + delta)."""
        family = 0 if base is None else 1
        L = 1 << 23
        PB = self.prob_bits
        mask = (1 << PB) - 1
        if len(data) < 4:
            raise WireError("truncated")
        x = struct.unpack("<I", data[:4])[0]
        pos = 4
        n = len(data)
        # No range check of the initial state: codec.md names none, and the
        # reference decodes on (a state outside [2^23, 2^31) ends in
        # truncated / trailing_bytes / corrupt_stream like any corruption).
        cum = self.cum[family]
        lut = self.lookup[family]

        def renorm():
            nonlocal x, pos
            while x < L:
                if pos >= n:
                    raise WireError("truncated")
                x = (x << 8) | data[pos]
                pos += 1

        def raw(bits):
            nonlocal x
            if bits == 0:
                return 0
            sh = PB - bits
            slot = x & mask
            v = slot >> sh
            freq = 1 << sh
            x = freq * (x >> PB) + slot - v * freq
            renorm()
            return v

        def sym(phys):
            nonlocal x
            slot = x & mask
            s = lut[phys][slot]
            c = cum[phys]
            x = (c[s + 1] - c[s]) * (x >> PB) + slot - c[s]
            renorm()
            return s

        cls = raw(4)
        if cls >= self.C:
            raise WireError("corrupt_stream", "class")
        H = self.H
        vals = []
        deferred = []  # (component, h, b): raw low bits carried by the final state
        taken, open_ = 0, True
        for j in range(DIM):
            phys, b = self.table(family, j, cls)
            s = sym(phys)
            if s == 2 * H:
                ln = raw(5)
                if ln < 1 or ln > 17:
                    raise WireError("corrupt_stream", "escape length")
                lo = min(ln - 1, 14)
                rest = raw(lo)
                if ln - 1 > lo:
                    rest |= raw(ln - 1 - lo) << lo
                v = unzigzag((1 << (ln - 1)) | rest)
            else:
                h = s - H
                if b and open_ and taken + b <= self.PAYLOAD_BITS:
                    deferred.append((j, h, b))
                    taken += b
                    v = None
                elif b:
                    open_ = False
                    r = raw(b)
                    v = (h << b) + r - (1 << (b - 1))
                else:
                    v = h
            vals.append(v)
        if pos != n:
            raise WireError("trailing_bytes")
        # The final state is 2^23 plus the payload of `taken` bits.
        if not L <= x < L + (1 << taken):
            raise WireError("corrupt_stream")
        p = x - L
        for j, h, b in deferred:
            vals[j] = (h << b) + (p & ((1 << b) - 1)) - (1 << (b - 1))
            p >>= b
        if base is None:
            out = vals
            if any(not -32768 <= v <= 32767 for v in out):
                raise WireError("code_out_of_range")
        else:
            out = [b + v for b, v in zip(base, vals)]
            if any(not -32768 <= v <= 32767 for v in out):
                raise WireError("code_out_of_range")
        return out


def _round_half_away(y):
    return int(math.floor(y + 0.5)) if y >= 0 else -int(math.floor(-y + 0.5))


def _sat16(v):
    return max(-32768, min(32767, v))


def load_codebook(path):
    with open(path, "rb") as f:
        return Codebook(f.read())
