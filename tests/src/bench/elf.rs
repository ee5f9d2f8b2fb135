//! How the measured ztunnel binary is linked: a static binary maps no shared C library, which
//! is about 1.7 MB of its idle resident memory, so results say which kind they measured.

use std::path::Path;

use anyhow::Context;

/// Program header type of the dynamic loader's path: only dynamically linked programs have it.
const PT_INTERP: u32 = 3;

/// "static" or "dynamic", from the program headers of the 64-bit little-endian ELF at `path`.
pub fn linking(path: &Path) -> anyhow::Result<&'static str> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = || format!("{} is not a 64-bit little-endian ELF", path.display());
    anyhow::ensure!(elf.get(..5) == Some(b"\x7fELF\x02".as_slice()), bad());
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let phoff = elf
        .get(0x20..0x28)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .with_context(bad)?;
    let entsize = usize::from(u16_at(0x36).with_context(bad)?);
    let count = usize::from(u16_at(0x38).with_context(bad)?);
    anyhow::ensure!(
        entsize >= 4 && elf.len() >= phoff.saturating_add(entsize * count),
        "{}: program headers cut short",
        path.display()
    );
    for i in 0..count {
        let kind = u32_at(phoff + i * entsize).with_context(bad)?;
        if kind == PT_INTERP {
            return Ok("dynamic");
        }
    }
    Ok("static")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header followed by one program header of type `kind`.
    fn elf(kind: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..5].copy_from_slice(b"\x7fELF\x02");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&kind.to_le_bytes());
        b
    }

    #[test]
    fn tells_static_from_dynamic_and_refuses_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, elf(1)).unwrap(); // PT_LOAD only
        assert_eq!(linking(&path).unwrap(), "static");
        std::fs::write(&path, elf(PT_INTERP)).unwrap();
        assert_eq!(linking(&path).unwrap(), "dynamic");
        // Test binaries are built without crt-static.
        assert_eq!(
            linking(&std::env::current_exe().unwrap()).unwrap(),
            "dynamic"
        );
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        assert!(linking(&path).is_err());
        let mut truncated = elf(1);
        truncated.truncate(70);
        std::fs::write(&path, truncated).unwrap();
        assert!(linking(&path).is_err());
    }
}
