//! OCI runtime bundles: `config.json` from the image configuration beside the
//! unpacked `rootfs/`, as `umoci unpack` writes them.

use std::path::Path;

use oci_blocks_core::oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec, UserBuilder};
use serde_json::Value;

use crate::{Error, Result};

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The runtime spec for an image configuration: args from `Entrypoint` and
/// `Cmd`, `Env`, `WorkingDir`, and `User` when it is numeric (`UID[:GID]`;
/// names need the image's `/etc/passwd`, which a runtime resolves).
pub fn runtime_spec(image_config: &Value, rootless: bool) -> Result<Spec> {
    let c = image_config.get("config");
    let mut args = strings(c.and_then(|c| c.get("Entrypoint")));
    args.extend(strings(c.and_then(|c| c.get("Cmd"))));
    if args.is_empty() {
        args.push("/bin/sh".into());
    }
    // The defaults umoci writes, then the image's variables (replacing them).
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "TERM=xterm".to_string(),
    ];
    for kv in strings(c.and_then(|c| c.get("Env"))) {
        let key = kv
            .split_once('=')
            .map_or(kv.as_str(), |(k, _)| k)
            .to_string();
        match env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
        {
            Some(existing) => *existing = kv,
            None => env.push(kv),
        }
    }
    let cwd = c
        .and_then(|c| c.get("WorkingDir"))
        .and_then(Value::as_str)
        .filter(|w| w.starts_with('/'))
        .unwrap_or("/")
        .to_string();
    let user = c
        .and_then(|c| c.get("User"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u.parse().unwrap_or(0), g.parse().unwrap_or(0)),
        None => (user.parse().unwrap_or(0), 0),
    };
    let invalid = |e: oci_blocks_core::oci_spec::OciSpecError| {
        Error::invalid("runtime config", e.to_string())
    };
    let mut spec = if rootless {
        Spec::rootless(uid, gid)
    } else {
        Spec::default()
    };
    let process = ProcessBuilder::default()
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(invalid)?,
        )
        .terminal(false)
        .build()
        .map_err(invalid)?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(invalid)?,
    ));
    Ok(spec)
}

/// Writes `config.json` into `bundle`.
pub fn write_config(bundle: &Path, spec: &Spec) -> Result<()> {
    let path = bundle.join("config.json");
    let json =
        serde_json::to_vec_pretty(spec).map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
}
