#!/usr/bin/env python3
"""Fetch and verify one target from a TUF repository with python-tuf's reference client.

Drover uses this to check that the repositories it publishes are readable by
`tuf.ngclient.Updater` (PyPI package `tuf`): the Rust interop test runs it against a repository
built in a temporary directory, and server tests run it against a live Drover server.

    tuf_client.py --metadata-url URL --targets-url URL --trusted-root FILE \
                  --target NAME --expect-sha256 HEX
    tuf_client.py --serve-dir DIR [--metadata-url metadata/ --targets-url targets/] ...

With --serve-dir, DIR is served over HTTP on 127.0.0.1 (a free port) for the duration of the run,
and the base URLs default to its root; relative --metadata-url / --targets-url are resolved
against it, so a repository laid out as DIR/metadata and DIR/targets works too.

On success, prints one JSON line describing the target and exits 0. On any failure (refresh,
unknown target, download, verification, wrong sha256) prints `error: <Type>: <message>` on stderr
and exits 1. Exits 3 if python-tuf is not installed, 2 on bad arguments.
"""

import argparse
import functools
import hashlib
import http.server
import inspect
import json
import os
import sys
import tempfile
import threading
import urllib.parse

EXIT_FAILED = 1
EXIT_NO_TUF = 3


def main() -> int:
    args = parse_args()
    try:
        from tuf.ngclient import Updater
    except ImportError as error:
        print(
            f"error: python-tuf is not installed for {sys.executable} ({error}); "
            "install it with `python3 -m pip install --user tuf`",
            file=sys.stderr,
        )
        return EXIT_NO_TUF

    server = None
    try:
        metadata_url, targets_url = args.metadata_url, args.targets_url
        if args.serve_dir:
            server, base_url = serve(args.serve_dir)
            metadata_url = urllib.parse.urljoin(base_url, metadata_url or "")
            targets_url = urllib.parse.urljoin(base_url, targets_url or "")
        elif not metadata_url or not targets_url:
            print("error: give --metadata-url and --targets-url, or --serve-dir", file=sys.stderr)
            return 2
        result = fetch(Updater, metadata_url, targets_url, args)
    except Exception as error:  # Every failure is a verdict for the caller, not a traceback.
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    print(json.dumps(result, sort_keys=True))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata-url", help="base URL of the metadata (N.root.json, timestamp.json, ...)")
    parser.add_argument("--targets-url", help="base URL of the target files")
    parser.add_argument("--serve-dir", help="serve this directory over HTTP and use it as the base URL")
    parser.add_argument("--trusted-root", required=True, help="file with the root metadata to trust first")
    parser.add_argument("--target", required=True, help="target path as listed in targets metadata")
    parser.add_argument("--expect-sha256", required=True, help="sha256 (hex) the target's bytes must have")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="send this HTTP header with every request (e.g. a device's Authorization)",
    )
    return parser.parse_args()


def header_fetcher(headers: dict):
    """A python-tuf fetcher that sends `headers` with every request (Drover's device API needs the
    device credential), built on the public FetcherInterface."""
    import urllib.error
    import urllib.request

    from tuf.api import exceptions
    from tuf.ngclient.fetcher import FetcherInterface

    class HeaderFetcher(FetcherInterface):
        def _fetch(self, url):
            request = urllib.request.Request(url, headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as error:
                raise exceptions.DownloadHTTPError(
                    f"HTTP error occurred with status {error.code}", error.code
                ) from error

            def chunks():
                with response:
                    while True:
                        chunk = response.read(400_000)
                        if not chunk:
                            return
                        yield chunk

            return chunks()

    return HeaderFetcher()


def fetch(Updater, metadata_url: str, targets_url: str, args: argparse.Namespace) -> dict:
    """Runs one ngclient update cycle in throwaway directories and downloads the target."""
    with open(args.trusted_root, "rb") as f:
        trusted_root = f.read()
    with tempfile.TemporaryDirectory(prefix="drover-tuf-client-") as work_dir:
        metadata_dir = os.path.join(work_dir, "metadata")
        target_dir = os.path.join(work_dir, "targets")
        os.makedirs(metadata_dir)
        os.makedirs(target_dir)
        # Older python-tuf reads the trusted root from metadata_dir/root.json; newer versions take
        # it as `bootstrap` (keyword-only, and required since tuf 6). Provide both.
        with open(os.path.join(metadata_dir, "root.json"), "wb") as f:
            f.write(trusted_root)
        kwargs = {}
        if args.header:
            headers = {}
            for header in args.header:
                name, _, value = header.partition(":")
                headers[name.strip()] = value.strip()
            kwargs["fetcher"] = header_fetcher(headers)
        if "bootstrap" in inspect.signature(Updater.__init__).parameters:
            kwargs["bootstrap"] = trusted_root
        updater = Updater(
            metadata_dir=metadata_dir,
            metadata_base_url=metadata_url,
            target_dir=target_dir,
            target_base_url=targets_url,
            **kwargs,
        )
        updater.refresh()
        target_info = updater.get_targetinfo(args.target)
        if target_info is None:
            raise LookupError(f"target {args.target!r} is not listed in the repository's targets metadata")
        path = updater.download_target(target_info)
        with open(path, "rb") as f:
            data = f.read()
    # Private in python-tuf, hence the guard; only informative (tests of root rotation read it).
    trusted_set = getattr(updater, "_trusted_set", None)
    root_version = trusted_set.root.version if trusted_set is not None else None
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != args.expect_sha256.lower():
        raise ValueError(f"target {args.target!r} has sha256 {sha256}, expected {args.expect_sha256}")
    return {
        "target": args.target,
        "length": len(data),
        "sha256": sha256,
        "custom": target_info.custom,
        "root_version": root_version,
    }


def serve(directory: str):
    """Serves `directory` on 127.0.0.1 at a free port in a background thread."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # Keep stderr for the verdict.
            pass

    handler = functools.partial(QuietHandler, directory=os.path.abspath(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


if __name__ == "__main__":
    sys.exit(main())
