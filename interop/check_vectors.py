#!/usr/bin/env python3
"""Checks every entry of docs/vectors/known-answers.json both ways with the
independent implementation in ots_ref.py:

  encode: the entry's inputs -> must equal its bytes
  decode: its bytes -> must equal its inputs

Usage: check_vectors.py [VECTORS.json]   (default: docs/vectors/known-answers.json)

Also checks the two worked examples of docs/wire-format.md (the download frame
and the signed request). One line per vector; exit status 1 on any mismatch.
"""

import json
import math
import os
import re
import sys
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ots_ref as o  # noqa: E402

ROOT = os.path.dirname(HERE)
CODEBOOK_FILES = {
    "minilm-v1": "core/codebooks/minilm-v1.bin",
    "minilm-small-v1": "core/codebooks/minilm-small-v1.bin",
}

failures = []


def report(name, enc_ok, dec_ok, note=""):
    ok = enc_ok and dec_ok
    print("%-4s %-48s encode %-4s decode %-4s %s" % ("ok" if ok else "FAIL", name, "ok" if enc_ok else "FAIL",
                                                   "ok" if dec_ok else "FAIL", note))
    if not ok:
        failures.append(name)


def attempt(f):
    try:
        return f(), None
    except Exception as e:  # a decoder error is a mismatch, reported
        return None, "%s: %s" % (type(e).__name__, e)


# ---------------------------------------------------------------------------
# The "records" prose of the frames entries, e.g.
#   UploadHead{seq 7, since 300, caps{64, 16, 65536}}; PatternUpdate{...}; ...
# parsed into record dicts. Field order is the order of wire-format.md.

FIELDS = {
    "UploadHead": ["seq", "since", "caps"],
    "PatternUpdate": ["id", "base_rev", "success_rate", "sample_count", "category", "coding", "code"],
    "PatternRemoval": ["id", "base_rev"],
    "DownloadHead": ["seq", "global_version", "more", "reset", "next_sync_s"],
    "Ack": ["id", "revision"],
    "Conflict": ["id", "server_rev", "state"],
    "GlobalUpsert": ["id", "version", "success_rate", "sample_count", "contributors", "category", "code"],
    "GlobalRemove": ["id", "version"],
    "Trend": ["version", "content_id", "score", "region", "category", "calculated_at"],
}
INT_FIELDS = {"seq", "since", "base_rev", "sample_count", "next_sync_s", "revision", "server_rev", "version",
              "contributors", "calculated_at", "global_version"}
FLOAT_FIELDS = {"success_rate", "score"}


def split_top(s, sep):
    out, depth, cur = [], 0, ""
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            out.append(cur.strip())
            cur = ""
            i += len(sep)
            continue
        cur += ch
        i += 1
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_value(field, text, resolve_code):
    text = text.strip()
    if field == "code" or text.startswith("code ="):
        return resolve_code(text.split("=", 1)[1].strip())
    # "seq 7", "base_rev 0", "more false": a label, then the value
    parts = text.split()
    val = parts[-1]
    if field in INT_FIELDS or field == "id" and re.fullmatch(r"[0-9]+", val):
        return int(val)
    if field in FLOAT_FIELDS:
        return float(val)
    if field in ("more", "reset"):
        return {"true": True, "false": False}[val]
    if field == "coding":
        return {"absolute": o.CODING_ABSOLUTE, "delta": o.CODING_DELTA}[val]
    return val


def parse_records(prose, resolve_code):
    recs = []
    for item in split_top(prose, ";"):
        m = re.fullmatch(r"(\w+)\{(.*)\}", item, re.S)
        name, inner = m.group(1), m.group(2)
        args = split_top(inner, ",")
        fields = FIELDS[name]
        if len(args) != len(fields):
            raise ValueError("%s: %d values for %d fields" % (name, len(args), len(fields)))
        r = {"type": name}
        for f, a in zip(fields, args):
            if f == "caps":
                g, t, b = [int(x) for x in re.fullmatch(r"caps\{(.*)\}", a).group(1).split(",")]
                r[f] = {"max_globals": g, "max_trends": t, "max_bytes": b}
            elif f == "state":
                if a == "none":
                    r[f] = None
                else:
                    sa = split_top(re.fullmatch(r"state\{(.*)\}", a).group(1), ",")
                    r[f] = {"success_rate": float(sa[0]), "sample_count": int(sa[1]), "category": sa[2],
                            "code": resolve_code(sa[3].split("=", 1)[1].strip())}
            else:
                r[f] = parse_value(f, a, resolve_code)
        recs.append(r)
    return recs


def same_records(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if set(x) != set(y):
            return False
        for k in x:
            if k in FLOAT_FIELDS or k == "state":
                if k == "state":
                    if (x[k] is None) != (y[k] is None):
                        return False
                    if x[k] is None:
                        continue
                    if o.f32(x[k]["success_rate"]) != o.f32(y[k]["success_rate"]):
                        return False
                    if any(x[k][f] != y[k][f] for f in ("sample_count", "category", "code")):
                        return False
                elif o.f32(x[k]) != o.f32(y[k]):
                    return False
            elif x[k] != y[k]:
                return False
    return True


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs/vectors/known-answers.json")
    with open(path) as f:
        v = json.load(f)
    if v.get("format") != 1:
        print("unknown vectors format %r" % v.get("format"))
        return 1
    cbs = {n: o.load_codebook(os.path.join(ROOT, p)) for n, p in CODEBOOK_FILES.items()}

    # -- codec -------------------------------------------------------------
    codec_by = {}
    for c in v["codec"]:
        cb = cbs[c["codebook"]]
        codec_by[(c["codebook"], c["case"])] = c
        name = "codec %s %s" % (c["codebook"], c["case"])
        want = bytes.fromhex(c["bytes"])
        base = c.get("base_codes")
        id_ok = "%08x" % cb.id == c["codebook_id"]
        enc, err_e = attempt(lambda: cb.encode(c["codes"], base))
        dec, err_d = attempt(lambda: cb.decode(want, base))
        enc_ok = id_ok and enc == want
        dec_ok = dec == c["codes"]
        note = "%d B" % len(want)
        if "embedding_f32_bits" in c:
            h = c["embedding_f32_bits"]
            x = [o.f32_from_bits(int(h[i:i + 8], 16)) for i in range(0, len(h), 8)]
            q, err_q = attempt(lambda: cb.quantize(x))
            enc_ok = enc_ok and q == c["codes"]
            note += ", quantize %s" % ("ok" if q == c["codes"] else "FAIL " + str(err_q or ""))
            # reconstruct: not a known answer; check it is near the input
            r = cb.reconstruct(c["codes"])
            cos = sum(a * b for a, b in zip(r, x)) / (sum(a * a for a in x) ** 0.5)
            note += ", cos(reconstruct, input) %.5f" % cos
        if not id_ok:
            note += ", codebook id %08x != %s" % (cb.id, c["codebook_id"])
        for e in (err_e, err_d):
            if e:
                note += ", " + e
        report(name, enc_ok, dec_ok, note)

    # -- frames ------------------------------------------------------------
    for fr in v["frames"]:
        small = fr["name"].startswith("small_")
        cbname = "minilm-small-v1" if small else "minilm-v1"
        cb = cbs[cbname]
        want = bytes.fromhex(fr["bytes"])
        name = "frame %s" % fr["name"]

        def resolve_code(ref, fr=fr, cbname=cbname):
            m = re.fullmatch(r"codec (\w+) case", ref)
            if m:
                return bytes.fromhex(codec_by[(cbname, m.group(1))]["bytes"])
            if ref.startswith("absolute codes of row"):
                return bytes.fromhex(fr["global_code"])
            raise ValueError("unknown code reference " + ref)

        if fr["name"].endswith("snapshot"):
            check_snapshot(fr, cb, cbname, want, codec_by, name)
            continue
        kind = o.KIND_UPLOAD if fr["name"].endswith("upload") else o.KIND_DOWNLOAD
        recs = parse_records(fr["records"], resolve_code)
        enc, err_e = attempt(lambda: o.encode_frame(kind, cb.id, recs))
        dec, err_d = attempt(lambda: o.decode_frame(want, kind))
        enc_ok = enc == want
        dec_ok = dec is not None and dec["codebook_id"] == cb.id and dec["flags"] == 0 and same_records(
            dec["records"], recs)
        note = "%d B, %d records" % (len(want), len(recs))
        # every code inside decodes with the codec and re-encodes to itself
        codes_ok = True
        if dec is not None:
            for r in dec["records"]:
                code = r.get("code") or (r.get("state") or {}).get("code")
                if code is None:
                    continue
                if r.get("coding") == o.CODING_DELTA:
                    base = codec_by[(cbname, "delta")]["base_codes"]
                    q = cb.decode(code, base)
                    codes_ok &= q == codec_by[(cbname, "delta")]["codes"] and cb.encode(q, base) == code
                else:
                    q = cb.decode(code)
                    codes_ok &= cb.encode(q) == code
            note += ", embedded codes decode and re-encode %s" % ("ok" if codes_ok else "FAIL")
        for e in (err_e, err_d):
            if e:
                note += ", " + e
        report(name, enc_ok, dec_ok and codes_ok, note)

    # -- signed responses (wire-format.md, "Signed responses") ------------
    for i, r in enumerate(v.get("responses", [])):
        got = o.sign_response(bytes.fromhex(r["key"]), r["counter"], r["status"],
                              bytes.fromhex(r["body"]))
        report("responses[%d] counter=%d status=%d" % (i, r["counter"], r["status"]),
               got == r["x_ots_signature"], True, "%d B body" % (len(r["body"]) // 2))

    # -- auth --------------------------------------------------------------
    for i, a in enumerate(v["auth"]):
        key = bytes.fromhex(a["key"])
        if "tls_psk" in a:
            got = o.tls_psk(key).hex()
            report("auth[%d] tls_psk" % i, got == a["tls_psk"], True, "derived")
            continue
        body = bytes.fromhex(a["body"])
        hdr = o.authorization(key, a["method"], a["path"], a["device"], a["counter"], body)
        enc_ok = hdr == a["authorization"]
        parsed, err = attempt(lambda: o.parse_authorization(a["authorization"]))
        dec_ok = parsed is not None and parsed[0] == a["counter"] and parsed[1] == bytes.fromhex(
            o.sign(key, a["method"], a["path"], a["device"], parsed[0], body))
        report("auth[%d] %s counter=%d" % (i, a["device"], a["counter"]), enc_ok, dec_ok,
               "%d B body" % len(body) + (", " + err if err else ""))

    # -- reconstruct and the conflict merge ---------------------------------
    check_reconstruct_and_merge(v, cbs)
    check_zstd(v)

    # -- the worked examples of wire-format.md ------------------------------
    check_doc_examples()

    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


def reconstruct_exact(cb, codes):
    """codec.md, "reconstruct exactly": f32 accumulation from mu, products and
    sums each rounded to f32 (array('f') rounds a binary64 result to
    binary32, exact for one + or * of f32 values), f64 norm."""
    a = array("f", cb.mu)
    if cb.basis is None:
        prod = array("f", [q * dm for q, dm in zip(codes, cb.dec_mul)])
        a = array("f", [x + p for x, p in zip(a, prod)])
    else:
        for j in range(o.DIM):
            q = codes[j]
            if q == 0:
                continue
            k = o.f32(q * cb.dec_mul[j])
            prod = array("f", [k * b for b in cb.basis[j]])
            a = array("f", [x + p for x, p in zip(a, prod)])
    s = 0.0
    for x in a:
        s += x * x
    n = o.f32(math.sqrt(s))
    inv = o.f32(1.0 / n)
    return array("f", [x * inv for x in a])


def merge_exact(n_dev, q_dev, r_dev, n_srv, q_srv, r_srv):
    """protocol.md, conflict resolution with the server's state: the codes in
    exact integers (halves away from zero, saturated to i16), the rate in f32,
    the sample count the larger one as sent."""
    nd, ns = max(1, n_dev), max(1, n_srv)
    codes = []
    for a, b in zip(q_dev, q_srv):
        num = nd * a + ns * b
        q, r = divmod(abs(num), nd + ns)
        if 2 * r >= nd + ns:
            q += 1
        q = q if num >= 0 else -q
        codes.append(max(-32768, min(32767, q)))
    f = o.f32
    rate = f(f(f(f(nd) * r_dev) + f(f(ns) * r_srv)) / f(nd + ns))
    return codes, min(1.0, max(0.0, rate)), max(n_dev, n_srv)


def check_reconstruct_and_merge(v, cbs):
    def bits_of(h):
        return [int(h[i:i + 8], 16) for i in range(0, len(h), 8)]

    for r in v.get("reconstruct", []):
        got = reconstruct_exact(cbs[r["codebook"]], r["codes"])
        want = bits_of(r["embedding_f32_bits"])
        mine = [o.f32_bits(x) for x in got]
        diff = sum(1 for a, b in zip(mine, want) if a != b)
        report("reconstruct %s %s" % (r["codebook"], r["case"]), diff == 0, True,
               "%d of 384 components differ" % diff if diff else "bit-exact")
    for m in v.get("merge", []):
        r_dev = o.f32_from_bits(int(m["rate_dev_f32_bits"], 16))
        r_srv = o.f32_from_bits(int(m["rate_srv_f32_bits"], 16))
        codes, rate, n = merge_exact(m["n_dev"], m["q_dev"], r_dev, m["n_srv"], m["q_srv"], r_srv)
        codes_ok = codes == m["merged"]
        rate_ok = "%08x" % o.f32_bits(rate) == m["rate_f32_bits"]
        report("merge %s" % m["case"], codes_ok and rate_ok and n == m["sample_count"], True,
               "codes %s, rate %s, samples %d" % ("ok" if codes_ok else "FAIL", "ok" if rate_ok else "FAIL", n))


def check_zstd(v):
    """The compressed frame: header as the plain one's with flag bit 0, CRC
    over the bytes as sent, a body that decompresses (zstd command line tool:
    the standard library has none) to the plain frame's records."""
    import shutil
    for z in v.get("zstd", []):
        plain, comp = bytes.fromhex(z["plain"]), bytes.fromhex(z["compressed"])
        name = "zstd %s" % z["name"]
        hp, hc = o.parse_header(plain), o.parse_header(comp)
        head_ok = (hc[0], hc[2]) == (hp[0], hp[2]) and hc[1] == hp[1] | o.FLAG_ZSTD_BODY
        # Re-encoding: the plain frame with the compressed body put in.
        enc_ok = head_ok and o.frame(hp[0], hp[2], hc[3], hc[1]) == comp
        if not shutil.which("zstd"):
            report(name, enc_ok, True, "no zstd tool: header and CRC only")
            continue
        body, err = attempt(lambda: o.zstd_decompress(hc[3], o.MAX_DOWNLOAD_FRAME))
        recs, err2 = attempt(lambda: o.decode_frame(comp)["records"])
        want, _ = attempt(lambda: o.decode_frame(plain)["records"])
        dec_ok = body == hp[3] and recs is not None and recs == want
        report(name, enc_ok, dec_ok, "%d B -> %d B, %d records%s" % (
            len(comp), len(plain), len(want or []), (", " + (err or err2)) if (err or err2) else ""))


def check_snapshot(fr, cb, cbname, want, codec_by, name):
    """docs/vectors/README.md: a capacity-4 client after uploading
    evening-drama (row 0, rate 0.75, 12 samples, drama) and Ack{evening-drama, 1}
    in a download at version 305; seq, counter (and the device id, which the
    README does not name) as the bytes show."""
    row0 = codec_by[(cbname, "absolute")]["codes"]
    dec, err = attempt(lambda: o.decode_frame(want, o.KIND_SNAPSHOT))
    note = "%d B" % len(want)
    dec_ok = False
    enc_ok = False
    if dec is not None:
        s = dec["snapshot"]
        expected_slot = {"id": "evening-drama", "rev": 1, "acked_valid": True, "success_rate": 0.75,
                         "sample_count": 12, "category": "drama", "acked": row0}
        dec_ok = (dec["codebook_id"] == cb.id and dec["flags"] == 0 and s["layout"] == 2
                  and s["global_version"] == 305 and len(s["slots"]) == 1 and s["slots"][0] == expected_slot)
        note += ", device %s seq %d counter %d" % (s["device_id"], s["seq"], s["auth_counter"])
        # encode: the documented facts plus the three fields read from the bytes
        built = {"device_id": s["device_id"], "seq": s["seq"], "global_version": 305,
                 "auth_counter": s["auth_counter"], "slots": [expected_slot]}
        enc, err_e = attempt(lambda: o.encode_snapshot(cb.id, built))
        enc_ok = enc == want
        if err_e:
            note += ", " + err_e
        if len(want) > 13 + 1 + 99 + 4 * 1201:
            dec_ok = False
            note += ", over max_snapshot_len(4)"
    else:
        note += ", " + err
    report(name, enc_ok, dec_ok, note)


def check_doc_examples():
    with open(os.path.join(ROOT, "docs/wire-format.md")) as f:
        doc = f.read()
    m = re.search(r"<!-- example-frame -->\s*```\n(.*?)```", doc, re.S)
    want = bytes.fromhex(m.group(1).replace("\n", " ").replace(" ", ""))
    recs = [
        {"type": "DownloadHead", "seq": 7, "global_version": 300, "more": False, "reset": False,
         "next_sync_s": 600},
        {"type": "Ack", "id": "p1", "revision": 4},
        {"type": "Trend", "version": 300, "content_id": "heat", "score": 2.5, "region": "DE",
         "category": "fresh", "calculated_at": 1700000000},
    ]
    enc = o.encode_frame(o.KIND_DOWNLOAD, 0x12345678, recs)
    dec, err = attempt(lambda: o.decode_frame(want))
    report("wire-format.md worked example frame", enc == want,
           dec is not None and dec["codebook_id"] == 0x12345678 and same_records(dec["records"], recs),
           "%d B" % len(want) + (", " + err if err else ""))
    m = re.search(r"<!-- auth-example -->\s*```\n(.*?)```", doc, re.S)
    msg = bytes.fromhex("".join(line.split("  ")[0].replace(" ", "") for line in m.group(1).splitlines()))
    key = bytes(range(32))
    mine = o.canonical_message("POST", "/api/v1/sync", "tv-0001", 42, b"hello")
    hdr = o.authorization(key, "POST", "/api/v1/sync", "tv-0001", 42, b"hello")
    m2 = re.search(r"Authorization: (OTS1-HMAC-SHA256 counter=42,sig=[0-9a-f]{64})", doc)
    report("wire-format.md worked example auth", mine == msg and hdr == m2.group(1),
           o.parse_authorization(m2.group(1))[0] == 42, "message %d B" % len(msg))
    m3 = re.search(r"it is\s+`([0-9a-f]{64})`", doc)
    report("wire-format.md tls_psk example", o.tls_psk(key).hex() == m3.group(1), True, "")


if __name__ == "__main__":
    sys.exit(main())
