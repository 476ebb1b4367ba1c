//! Interop with the reference client: repositories built by this crate, read by python-tuf's
//! `tuf.ngclient.Updater` through `tests/interop/tuf_client.py`.
//!
//! Runs only when `DROVER_TEST_TUF` is set (python-tuf is not a build dependency); then a missing
//! `python3` or `tuf` module fails the tests rather than skipping them. `DROVER_TUF_PYTHON`
//! chooses the interpreter (default `python3`). Install python-tuf with
//! `python3 -m pip install --user tuf`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drover_tuf::naming::{metadata_file_name, target_file_path, TIMESTAMP_FILE_NAME};
use drover_tuf::{
    rotate_root, sign, MetaFile, PrivateKey, Role, RootBuilder, Snapshot, TargetFile, Targets,
    Timestamp, TrustedSet,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

const APP: &[u8] = b"drover firmware 2.0.0 application image";
const README: &[u8] = b"release notes: nothing to see here\n";

#[test]
fn python_tuf_downloads_both_targets_through_a_rotated_root() {
    let Some(python) = python_tuf() else { return };
    let repo = Repository::build(RepositoryOptions::default());

    for (name, bytes) in [("fw/app.bin", APP), ("readme.txt", README)] {
        let output = repo.run_client(&python, name, &sha256_hex(bytes));
        assert_success(&output);
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(result["length"], bytes.len());
        assert_eq!(
            result["root_version"], 2,
            "python-tuf did not walk to root v2: {result}"
        );
    }
    let output = repo.run_client(&python, "fw/app.bin", &sha256_hex(APP));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        result["custom"],
        json!({"firmware_version": "2.0.0", "hardware": ["rev-a", "rev-b"]})
    );

    // Drover's own client agrees with the reference client on the same files.
    repo.check_with_trusted_set();
}

#[test]
fn python_tuf_refuses_a_tampered_target() {
    let Some(python) = python_tuf() else { return };
    let repo = Repository::build(RepositoryOptions::default());
    let mut tampered = APP.to_vec();
    tampered[0] ^= 0x20; // Same length: only the hash can catch it.
    std::fs::write(repo.target_file("fw/app.bin"), &tampered).unwrap();

    let output = repo.run_client(&python, "fw/app.bin", &sha256_hex(APP));
    assert_refused(&output, "LengthOrHashMismatchError");
}

#[test]
fn python_tuf_refuses_an_expired_timestamp() {
    let Some(python) = python_tuf() else { return };
    let repo = Repository::build(RepositoryOptions {
        timestamp_expires: OffsetDateTime::now_utc() - Duration::hours(1),
        ..RepositoryOptions::default()
    });
    let output = repo.run_client(&python, "fw/app.bin", &sha256_hex(APP));
    assert_refused(&output, "ExpiredMetadataError");
}

#[test]
fn python_tuf_refuses_a_root_rotation_not_cross_signed() {
    let Some(python) = python_tuf() else { return };
    let repo = Repository::build(RepositoryOptions {
        cross_sign_root: false,
        ..RepositoryOptions::default()
    });
    let output = repo.run_client(&python, "fw/app.bin", &sha256_hex(APP));
    assert_refused(&output, "UnsignedMetadataError");
}

#[test]
fn canonical_json_and_key_ids_match_securesystemslib() {
    let Some(python) = python_tuf() else { return };
    let value = json!({
        "b": "quote\" backslash\\ newline\n tab\t control\u{1} é \u{1F600}",
        "a": [1, -2, u64::MAX, true, false, null, {"z": {}, "é": [], "\u{FF21}": 0}],
        "": "empty key",
    });
    let key = PrivateKey::generate().unwrap();
    let input = json!({"value": value, "public": key.public_key().keyval.public});
    // compute_default_keyid is what SSlibKey uses for new keys; it lives in a private module,
    // so fall back to from_crypto (which needs pyca/cryptography) if it moves.
    let script = r#"
import json, sys
from securesystemslib.formats import encode_canonical
data = json.load(sys.stdin)
keyval = {"public": data["public"]}
try:
    from securesystemslib.signer._utils import compute_default_keyid
    keyid = compute_default_keyid("ed25519", "ed25519", keyval)
except ImportError:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from securesystemslib.signer import SSlibKey
    raw = Ed25519PublicKey.from_public_bytes(bytes.fromhex(data["public"]))
    keyid = SSlibKey.from_crypto(raw, scheme="ed25519").keyid
canonical = encode_canonical(data["value"]).encode("utf-8")
json.dump({"canonical_hex": canonical.hex(), "keyid": keyid}, sys.stdout)
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_success(&output);
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours = drover_tuf::canonical::to_canonical_json(&value).unwrap();
    assert_eq!(
        result["canonical_hex"].as_str().unwrap(),
        hex_encode(&ours),
        "canonical JSON differs; ours: {}",
        String::from_utf8_lossy(&ours)
    );
    assert_eq!(result["keyid"].as_str().unwrap(), key.key_id().as_str());
}

/// The interpreter to use, or `None` (after saying so) when the interop tests are not enabled.
///
/// Panics when they are enabled but cannot run: a CI job that asked for interop must not pass
/// without it.
fn python_tuf() -> Option<String> {
    if std::env::var_os("DROVER_TEST_TUF").is_none() {
        eprintln!("skipped: python-tuf interop tests run only when DROVER_TEST_TUF is set");
        return None;
    }
    let python = std::env::var("DROVER_TUF_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&python)
        .args(["-c", "import tuf, tuf.ngclient; print(tuf.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("DROVER_TEST_TUF is set but `{python}` cannot be run: {e}"));
    assert!(
        output.status.success(),
        "DROVER_TEST_TUF is set but python-tuf is not importable by `{python}` \
         (install it with `{python} -m pip install --user tuf`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "python-tuf {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Some(python)
}

/// What varies between the repositories the tests build.
struct RepositoryOptions {
    timestamp_expires: OffsetDateTime,
    /// Whether root v2 is signed by root v1's key too, as a rotation must be.
    cross_sign_root: bool,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            timestamp_expires: in_a_year(),
            cross_sign_root: true,
        }
    }
}

/// A repository in a temporary directory, laid out as `metadata/` and `targets/`.
struct Repository {
    dir: tempfile::TempDir,
    trusted_root: PathBuf,
}

impl Repository {
    /// Root v1 → root v2 (new root key, new timestamp key), targets with two files (one in a
    /// subdirectory, with custom data), snapshot and timestamp pinning hashes and lengths,
    /// consistent snapshots with hash-prefixed target files.
    fn build(options: RepositoryOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let expires = in_a_year();
        // Keys go through key files, as offline keys would.
        let key = || {
            let text = PrivateKey::generate().unwrap().to_key_file();
            PrivateKey::from_key_file(&text).unwrap()
        };
        let (root_key_1, root_key_2) = (key(), key());
        let (timestamp_key_1, timestamp_key_2) = (key(), key());
        let (targets_key, snapshot_key) = (key(), key());

        let root_1 = RootBuilder::new(expires)
            .role(Role::Root, &[root_key_1.public_key()], 1)
            .role(Role::Targets, &[targets_key.public_key()], 1)
            .role(Role::Snapshot, &[snapshot_key.public_key()], 1)
            .role(Role::Timestamp, &[timestamp_key_1.public_key()], 1)
            .build()
            .unwrap();
        let root_1 = sign(root_1, &[&root_key_1]).unwrap();
        let root_2 = RootBuilder::successor_of(root_1.signed(), expires)
            .role(Role::Root, &[root_key_2.public_key()], 1)
            .role(Role::Timestamp, &[timestamp_key_2.public_key()], 1)
            .build()
            .unwrap();
        let root_2 = if options.cross_sign_root {
            rotate_root(root_1.signed(), root_2, &[&root_key_1, &root_key_2]).unwrap()
        } else {
            sign(root_2, &[&root_key_2]).unwrap()
        };
        let consistent = root_2.signed().consistent_snapshot;

        let mut targets = Targets::new(1, expires);
        let custom = json!({"firmware_version": "2.0.0", "hardware": ["rev-a", "rev-b"]});
        targets.targets.insert(
            "fw/app.bin".into(),
            TargetFile::from_bytes(APP).with_custom(custom.as_object().unwrap().clone()),
        );
        targets
            .targets
            .insert("readme.txt".into(), TargetFile::from_bytes(README));
        let targets = sign(targets, &[&targets_key]).unwrap().to_bytes();
        let snapshot = Snapshot::new(1, expires, MetaFile::from_bytes(1, &targets));
        let snapshot = sign(snapshot, &[&snapshot_key]).unwrap().to_bytes();
        let timestamp = Timestamp::new(
            1,
            options.timestamp_expires,
            MetaFile::from_bytes(1, &snapshot),
        );
        let timestamp = sign(timestamp, &[&timestamp_key_2]).unwrap().to_bytes();

        let metadata = dir.path().join("metadata");
        write(
            &metadata.join(metadata_file_name(Role::Root, 1, consistent)),
            &root_1.to_bytes(),
        );
        write(
            &metadata.join(metadata_file_name(Role::Root, 2, consistent)),
            &root_2.to_bytes(),
        );
        write(
            &metadata.join(metadata_file_name(Role::Targets, 1, consistent)),
            &targets,
        );
        write(
            &metadata.join(metadata_file_name(Role::Snapshot, 1, consistent)),
            &snapshot,
        );
        write(&metadata.join(TIMESTAMP_FILE_NAME), &timestamp);
        for (name, bytes) in [("fw/app.bin", APP), ("readme.txt", README)] {
            let path = target_file_path(name, &TargetFile::from_bytes(bytes), consistent).unwrap();
            write(&dir.path().join("targets").join(path), bytes);
        }
        let trusted_root = dir.path().join("trusted-root.json");
        write(&trusted_root, &root_1.to_bytes());
        Repository { dir, trusted_root }
    }

    fn target_file(&self, name: &str) -> PathBuf {
        let bytes = if name == "fw/app.bin" { APP } else { README };
        let path = target_file_path(name, &TargetFile::from_bytes(bytes), true).unwrap();
        self.dir.path().join("targets").join(path)
    }

    fn run_client(&self, python: &str, target: &str, expect_sha256: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/tuf_client.py");
        Command::new(python)
            .arg(script)
            .arg("--serve-dir")
            .arg(self.dir.path())
            .args(["--metadata-url", "metadata/", "--targets-url", "targets/"])
            .arg("--trusted-root")
            .arg(&self.trusted_root)
            .args(["--target", target, "--expect-sha256", expect_sha256])
            .output()
            .expect("the interpreter ran a moment ago")
    }

    /// Walks the same files with [`TrustedSet`], as the agent would.
    fn check_with_trusted_set(&self) {
        let read = |name: &str| std::fs::read(self.dir.path().join("metadata").join(name)).unwrap();
        let now = OffsetDateTime::now_utc();
        let mut trusted_set = TrustedSet::new(&std::fs::read(&self.trusted_root).unwrap()).unwrap();
        while let Ok(bytes) = std::fs::read(
            self.dir
                .path()
                .join("metadata")
                .join(trusted_set.next_root_file_name()),
        ) {
            trusted_set.update_root(&bytes).unwrap();
        }
        assert_eq!(trusted_set.root().signed().version, 2);
        trusted_set
            .update_timestamp(&read(TIMESTAMP_FILE_NAME), now)
            .unwrap();
        trusted_set
            .update_snapshot(&read(&trusted_set.snapshot_file_name().unwrap()), now)
            .unwrap();
        trusted_set
            .update_targets(&read(&trusted_set.targets_file_name().unwrap()), now)
            .unwrap();
        let download_path = trusted_set.target_download_path("fw/app.bin").unwrap();
        let bytes = std::fs::read(self.dir.path().join("targets").join(download_path)).unwrap();
        trusted_set.verify_target("fw/app.bin", &bytes).unwrap();
    }
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "python-tuf refused the repository ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_refused(output: &Output, expected_error: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected python-tuf to refuse; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(expected_error),
        "expected {expected_error}, got:\n{stderr}"
    );
    eprintln!("python-tuf refused, as expected: {}", stderr.trim());
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    TargetFile::from_bytes(bytes).sha256().unwrap().to_owned()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn in_a_year() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::days(365)
}
