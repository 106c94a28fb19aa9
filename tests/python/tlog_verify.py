#!/usr/bin/env python3
"""Independent verifier for a secondkey log bundle (C2SP tlog-tiles on disk).

Written from the specifications only (C2SP signed-note, tlog-checkpoint,
tlog-tiles; RFC 6962), sharing no code with the Rust crate, so that the two
implementations check each other.

Usage: tlog_verify.py --bundle DIR --key VKEY [--since CHECKPOINT_FILE]
Exits 0 and prints "OK ..." when the bundle verifies, 1 with a reason otherwise.
Needs Python 3 and the `cryptography` package (pip install cryptography).
"""

import argparse
import base64
import hashlib
import json
import os
import struct
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover
    sys.stderr.write("tlog_verify: the 'cryptography' package is missing: pip install cryptography\n")
    sys.exit(2)


class VerifyError(Exception):
    pass


def sha256(data):
    return hashlib.sha256(data).digest()


def hash_leaf(data):
    return sha256(b"\x00" + data)


def hash_children(left, right):
    return sha256(b"\x01" + left + right)


def mth(hashes):
    """RFC 6962 Merkle Tree Hash over a list of leaf hashes (iterative)."""
    if not hashes:
        return sha256(b"")
    # Fold the stack of perfect subtrees, exactly as an append-only log does.
    stack = []  # (height, hash)
    for h in hashes:
        node = (0, h)
        while stack and stack[-1][0] == node[0]:
            height, left = stack.pop()
            node = (height + 1, hash_children(left, node[1]))
        stack.append(node)
    root = stack.pop()[1]
    while stack:
        root = hash_children(stack.pop()[1], root)
    return root


# --- signed notes ----------------------------------------------------------

def parse_vkey(vkey):
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise VerifyError("verifier key must look like <name>+<hex id>+<base64 key>")
    name, hex_id, b64 = parts
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 33 or raw[0] != 0x01:
        raise VerifyError("verifier key is not an Ed25519 (type 0x01) key")
    key_id = sha256(name.encode() + b"\n" + raw)[:4]
    if len(hex_id) != 8 or bytes.fromhex(hex_id) != key_id:
        raise VerifyError("verifier key id does not match its name and key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:])


def open_note(note, vkey):
    """Return the note text if it carries a valid signature by vkey."""
    name, key_id, pub = parse_vkey(vkey)
    if len(note) > 1 << 20:
        raise VerifyError("note is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise VerifyError("note contains control characters")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise VerifyError("note has no signature block")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    if not sig_block:
        raise VerifyError("note has no signatures")
    good = False
    for line in sig_block[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise VerifyError("malformed signature line")
        sig_name, _, b64 = line[2:].partition(" ")
        blob = base64.b64decode(b64, validate=True)
        if len(blob) < 5:
            raise VerifyError("signature too short")
        if sig_name != name or blob[:4] != key_id:
            continue  # unknown key: ignore, as the spec requires
        try:
            pub.verify(blob[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise VerifyError("signature by %s does not verify: note altered or forged" % name)
        good = True
    if not good:
        raise VerifyError("checkpoint is not signed by the trusted key %s" % name)
    return text


def parse_checkpoint(text):
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[0]:
        raise VerifyError("checkpoint body is malformed")
    if not lines[1].isdigit() or (lines[1] != "0" and lines[1].startswith("0")):
        raise VerifyError("checkpoint size is malformed")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise VerifyError("checkpoint root is not 32 bytes")
    return lines[0], int(lines[1]), root


# --- tiles -----------------------------------------------------------------

def index_path(n):
    groups = ["%03d" % (n % 1000)]
    n //= 1000
    while n:
        groups.append("x%03d" % (n % 1000))
        n //= 1000
    return "/".join(reversed(groups))


def tile_file(bundle, kind, n, width):
    rel = "tile/%s/%s" % (kind, index_path(n))
    if width < 256:
        rel += ".p/%d" % width
    path = os.path.join(bundle, rel)
    if not os.path.exists(path):
        raise VerifyError("%s is missing" % rel)
    with open(path, "rb") as f:
        return rel, f.read()


def read_entries(data, rel):
    entries, off = [], 0
    while off < len(data):
        if off + 2 > len(data):
            raise VerifyError("%s is truncated" % rel)
        (n,) = struct.unpack(">H", data[off : off + 2])
        if off + 2 + n > len(data):
            raise VerifyError("%s is truncated" % rel)
        entries.append(data[off + 2 : off + 2 + n])
        off += 2 + n
    return entries


def verify(bundle, vkey, since=None):
    with open(os.path.join(bundle, "checkpoint"), encoding="utf-8") as f:
        origin, size, root = parse_checkpoint(open_note(f.read(), vkey))

    leaves = []
    for n in range((size + 255) // 256):
        width = min(256, size - n * 256)
        rel, data = tile_file(bundle, "entries", n, width)
        entries = read_entries(data, rel)
        if len(entries) != width:
            raise VerifyError("%s holds %d entries, expected %d" % (rel, len(entries), width))
        for j, raw in enumerate(entries):
            pos = n * 256 + j
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise VerifyError("entry %d is not valid JSON" % pos)
            if not isinstance(obj, dict) or obj.get("index") != pos:
                raise VerifyError("entry at position %d has index %r: entries deleted, inserted or reordered"
                                  % (pos, obj.get("index") if isinstance(obj, dict) else None))
            leaves.append(hash_leaf(raw))

    # Every level's tiles must hold the hashes of complete subtrees of height 8*L.
    level, hashes = 0, leaves
    while hashes:
        for n in range((len(hashes) + 255) // 256):
            chunk = hashes[n * 256 : n * 256 + 256]
            rel, data = tile_file(bundle, str(level), n, len(chunk))
            if data != b"".join(chunk):
                if level == 0:
                    for j, h in enumerate(chunk):
                        if data[32 * j : 32 * j + 32] != h:
                            raise VerifyError("entry %d does not match the level-0 hash tile" % (n * 256 + j))
                raise VerifyError("hash tile %s does not match the entries" % rel)
        full = len(hashes) // 256
        hashes = [mth(hashes[i * 256 : i * 256 + 256]) for i in range(full)]
        level += 1

    if mth(leaves) != root:
        raise VerifyError("recomputed root differs from the signed checkpoint root")

    if since is not None:
        old_origin, old_size, old_root = parse_checkpoint(open_note(since, vkey))
        if old_origin != origin:
            raise VerifyError("older checkpoint is for another log")
        if old_size > size:
            raise VerifyError("log truncated: older checkpoint has %d entries, this one %d" % (old_size, size))
        if mth(leaves[:old_size]) != old_root:
            raise VerifyError("history rewritten: log is not consistent with the older checkpoint")
    return origin, size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--key", required=True, help="verifier key <name>+<id>+<base64>")
    ap.add_argument("--since", help="file holding an older signed checkpoint")
    args = ap.parse_args(argv)
    try:
        since = None
        if args.since:
            with open(args.since, encoding="utf-8") as f:
                since = f.read()
        origin, size = verify(args.bundle, args.key, since)
    except (VerifyError, OSError, ValueError) as e:
        print("FAIL: %s" % e)
        return 1
    print("OK: %s, %d entries verified" % (origin, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
