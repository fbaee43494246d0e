//! Size and time of gzip at several zlib levels, with the zlib-rs backend
//! the layers are written with, on the files given (directories are read
//! whole, in name order). For `benches/deflate-levels.py`.
//!
//! Usage: cargo run --release -p oci-blocks-core --example deflate_levels -- PATH...

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            files(&e, out)?;
        }
    } else if path.is_file() && !path.is_symlink() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut paths = Vec::new();
    for arg in std::env::args().skip(1) {
        files(Path::new(&arg), &mut paths)?;
    }
    let mut data = Vec::new();
    for p in &paths {
        data.extend(std::fs::read(p)?);
    }
    println!("{} files, {} bytes", paths.len(), data.len());
    for level in [1, 2, 6] {
        let start = Instant::now();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        gz.write_all(&data)?;
        let size = gz.finish()?.len();
        println!(
            "level {level}: {size} bytes, {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
