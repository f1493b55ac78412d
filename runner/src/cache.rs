//! The compiled-component cache the runner shares with the daemon's checks, and the `--check` and
//! `--precompile` modes that fill it.
//!
//! Invariants (docs/annotations.md, `wasm.shim.io/component-isolation`):
//! - Compiled components live under `cache_dir/<fingerprint>/<sha256>.component.cwasm` in the daemon's private
//!   (0700, ours) directory: wasmtime's serialized component as it is, beside `<...>.cwasm.sha256` (the hex
//!   sha256 of that file). The fingerprint is wasmtime's own compatibility hash, so another build or Config never
//!   loads a file.
//! - A start maps the file (`Component::deserialize_file`) instead of copying it, so every runner of one component
//!   shares its compiled code in the page cache; the file is hashed first, and one failing a check (owner, mode,
//!   sum) is ignored and rewritten by rename (a mapped file is never changed in place), never mapped.
//! - A component compiled for a plan hashes to the digest the daemon checked, or the start fails.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::plan::Plan;

/// The compiled component: from our cache file when it passes every check, else compiled from the wasm
/// bytes (whose sha256 must be the digest the daemon checked) and written to the cache.
pub fn load_component(engine: &Engine, plan: &Plan) -> Result<Component, String> {
    if plan.digest.len() != 64 || !plan.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad digest {:?}", plan.digest));
    }
    let cache = Cache::open(engine, &plan.cache_dir)?;
    if let Some(component) = cache.get(engine, &plan.digest) {
        return Ok(component);
    }
    let bytes = fs::read(&plan.wasm).map_err(|e| format!("{}: {e}", plan.wasm.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    if digest != plan.digest {
        return Err(format!(
            "{} changed since the daemon read it (sha256 {digest})",
            plan.wasm.display()
        ));
    }
    cache.compile(engine, &bytes, &digest)
}

/// `--precompile CACHE_DIR FILE...`: compile each component into the cache (what the first start of it on
/// this node would do); prints `SHA256 FILE compiled|cached` per file; exit 1 if any failed.
pub fn precompile(cache_dir: &Path, files: &[String]) -> i32 {
    let result =
        crate::new_engine().and_then(|engine| Ok((Cache::open(&engine, cache_dir)?, engine)));
    let (cache, engine) = result.unwrap_or_else(|e| crate::exit::fail(e));
    let mut status = 0;
    for file in files {
        let outcome = fs::read(file).map_err(|e| e.to_string()).and_then(|bytes| {
            let digest = hex(&Sha256::digest(&bytes));
            if cache.get(&engine, &digest).is_some() {
                return Ok(format!("{digest} {file} cached"));
            }
            cache.compile(&engine, &bytes, &digest)?;
            Ok(format!("{digest} {file} compiled"))
        });
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("wasm-shim-component-runner: {file}: {e}");
                status = 1;
            }
        }
    }
    status
}

/// `--check CACHE_DIR FILE`: how the daemon validates a component before it first runs it here. Compiles FILE into
/// the cache (or finds it there: the start that follows only deserializes it) and prints one JSON line, its
/// sha256 and the names of its exports; exit 1 with the reason on stderr when this engine cannot compile it.
pub fn check(cache_dir: &Path, file: &Path) -> i32 {
    let result = (|| -> Result<String, String> {
        let engine = crate::new_engine()?;
        let cache = Cache::open(&engine, cache_dir)?;
        let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let digest = hex(&Sha256::digest(&bytes));
        let component = match cache.get(&engine, &digest) {
            Some(component) => component,
            None => cache.compile(&engine, &bytes, &digest)?,
        };
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Ok(serde_json::json!({ "sha256": digest, "exports": exports }).to_string())
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Compiled components of this engine under the daemon's private cache directory.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn open(engine: &Engine, cache_dir: &Path) -> Result<Cache, String> {
        check_private_dir(cache_dir)?;
        Ok(Cache {
            dir: cache_dir.join(fingerprint(engine)),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.component.cwasm"))
    }

    fn sum_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.component.cwasm.sha256"))
    }

    /// The cached component, when its file passes every check (else None: compile again).
    fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let expected = read_private_file(&self.sum_path(digest), 64)?;
        let actual = sha256_of_private_file(&path)?;
        if actual.as_bytes() != expected.as_slice() {
            return None;
        }
        // SAFETY: the file is ours, private (0600 in a 0700 directory), its contents hash to the digest
        // recorded when this engine (the directory's compatibility hash) wrote it, and it is only ever replaced
        // by rename, never written in place, so the mapping stays as checked; wasmtime checks it too.
        unsafe { Component::deserialize_file(engine, &path) }.ok()
    }

    /// Compile `bytes` (whose sha256 is `digest`) and store the result; a cache we cannot write only costs the
    /// next start a compile.
    fn compile(&self, engine: &Engine, bytes: &[u8], digest: &str) -> Result<Component, String> {
        let component =
            Component::from_binary(engine, bytes).map_err(|e| format!("cannot compile: {e:#}"))?;
        if let Ok(payload) = component.serialize() {
            let _ = fs::create_dir(&self.dir)
                .map(|_| fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)));
            if check_private_dir(&self.dir).is_ok() {
                // The file first, then its sum: a reader between the two sees a mismatch and compiles.
                let sum = hex(&Sha256::digest(&payload));
                let _ = write_private_file(&self.path(digest), &payload)
                    .and_then(|_| write_private_file(&self.sum_path(digest), sum.as_bytes()));
            }
        }
        Ok(component)
    }
}

/// The cache subdirectory of this engine: compiled code is only valid for the wasmtime build and settings
/// that made it (wasmtime's own compatibility hash: version, Config, target).
fn fingerprint(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!(
        "component-runner-{}-{:016x}",
        std::env::consts::ARCH,
        hasher.finish()
    )
}

fn check_private_dir(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("cache directory {}: {e}", path.display()))?;
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "cache directory {} must be a 0700 directory owned by uid {uid}",
            path.display()
        ));
    }
    Ok(())
}

/// `path` opened for reading when it is a regular file of ours that nobody else can read or write.
fn open_private_file(path: &Path) -> Option<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o077 != 0 {
        return None;
    }
    Some(file)
}

/// The contents of a private file of at most `limit` bytes.
fn read_private_file(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    open_private_file(path)?
        .take(limit + 1)
        .read_to_end(&mut content)
        .ok()?;
    (content.len() as u64 <= limit).then_some(content)
}

/// The hex sha256 of a private file, read in chunks (the page cache holds it; no copy stays in this process).
fn sha256_of_private_file(path: &Path) -> Option<String> {
    let mut file = open_private_file(path)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => hasher.update(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(hex(&hasher.finalize()))
}

/// Replace `path` with `payload` (0600) all at once: a temporary file, synced, then renamed over it.
fn write_private_file(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(payload)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
