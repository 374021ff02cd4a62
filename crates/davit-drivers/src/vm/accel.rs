//! Which accelerator really works on this node.
//!
//! `/dev/kvm` existing proves little: nested KVM may enter the guest but handle each guest page fault so slowly
//! that a kernel never boots. So the probe boots a guest that needs no files: a 64 KiB firmware image whose
//! reset vector switches to 32-bit protected mode, touches 64 MiB of guest memory (`rep stosd`, one fault per
//! page) and then writes `0x31` to an `isa-debug-exit` port. QEMU exits with `(0x31 << 1) | 1 = 99`. Working KVM
//! does this in well under a second (TCG in about 0.4 s); anything else, or no exit within the timeout (the
//! probe is killed), means TCG.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The exit status of QEMU when the probe guest ran.
const PROBE_EXIT_CODE: i32 = 99;
/// QEMU insists on firmware images of a multiple of 64 KiB.
const PROBE_FIRMWARE_BYTES: usize = 64 * 1024;
/// Guest memory of the probe: the 64 MiB it touches from 1 MiB on, plus room.
const PROBE_MEMORY_MIB: &str = "96";

/// The probe firmware (see the module docs). It is mapped at the top of the 4 GiB space: ROM offset `o` is
/// linear address `0xffff_0000 + o`, and real-mode code runs with CS base `0xffff_0000`, so IP = offset.
fn probe_firmware() -> Vec<u8> {
    let mut image = vec![0xf4u8; PROBE_FIRMWARE_BYTES];
    let mut put = |offset: usize, bytes: &[u8]| image[offset..offset + bytes.len()].copy_from_slice(bytes);
    // GDT: null, flat 32-bit code (selector 0x08), flat data (0x10).
    put(0xff00, &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0x9a, 0xcf, 0, 0xff, 0xff, 0, 0, 0, 0x92, 0xcf, 0]);
    // GDT descriptor: limit 23, base 0xffffff00.
    put(0xff18, &[0x17, 0, 0x00, 0xff, 0xff, 0xff]);
    // 32-bit: mov ax,0x10; mov ds,ax; mov es,ax; mov edi,0x100000; mov ecx,0x1000000 (dwords); xor eax,eax; cld;
    // rep stosd; mov al,0x31; out 0xf4,al; hlt; jmp $-1.
    put(
        0xff20,
        &[
            0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0xbf, 0x00, 0x00, 0x10, 0x00, 0xb9, 0x00, 0x00, 0x00, 0x01, 0x31, 0xc0, 0xfc,
            0xf3, 0xab, 0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd,
        ],
    );
    // 16-bit: cli; o32 lgdt cs:[0xff18]; mov eax,cr0; or al,1; mov cr0,eax; jmp dword 0x08:0xffffff20.
    put(
        0xffc0,
        &[
            0xfa, 0x66, 0x2e, 0x0f, 0x01, 0x16, 0x18, 0xff, 0x0f, 0x20, 0xc0, 0x0c, 0x01, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0x20, 0xff, 0xff,
            0xff, 0x08, 0x00,
        ],
    );
    // Reset vector: jmp short 0xffc0.
    put(0xfff0, &[0xeb, 0xce]);
    image
}

/// How the accelerator is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelProbeConfig {
    /// How long the KVM probe guest may take (it takes milliseconds when KVM works).
    pub timeout: Duration,
    /// The KVM device; the probe is skipped (TCG) when it is missing.
    pub kvm_device: PathBuf,
    /// Skip the probe and use TCG (for hosts known to have no usable KVM).
    pub force_tcg: bool,
}

impl Default for AccelProbeConfig {
    fn default() -> Self {
        AccelProbeConfig { timeout: Duration::from_secs(3), kvm_device: PathBuf::from("/dev/kvm"), force_tcg: false }
    }
}

/// The accelerator guests get, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelProbe {
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    pub reason: String,
}

/// Runs the probe (see the module docs).
pub async fn probe(qemu: &Path, config: &AccelProbeConfig) -> AccelProbe {
    let tcg = |reason: String| AccelProbe { accel: "tcg", reason };
    if config.force_tcg {
        return tcg("KVM probe disabled by configuration".to_owned());
    }
    if !config.kvm_device.exists() {
        return tcg(format!("{} does not exist", config.kvm_device.display()));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let firmware = std::env::temp_dir().join(format!("davit-kvm-probe-{}-{nanos}.bin", std::process::id()));
    if let Err(error) = std::fs::write(&firmware, probe_firmware()) {
        return tcg(format!("writing the probe firmware {}: {error}", firmware.display()));
    }
    let result = run_probe(qemu, &firmware, config.timeout).await;
    let _ = std::fs::remove_file(&firmware);
    result
}

async fn run_probe(qemu: &Path, firmware: &Path, timeout: Duration) -> AccelProbe {
    let tcg = |reason: String| AccelProbe { accel: "tcg", reason };
    let child = tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-M", "microvm,acpi=off", "-m", PROBE_MEMORY_MIB, "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-bios"])
        .arg(firmware)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => return tcg(format!("starting {}: {error}", qemu.display())),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.code() == Some(PROBE_EXIT_CODE) => {
            AccelProbe { accel: "kvm", reason: "a KVM probe guest touched 64 MiB and exited in time".to_owned() }
        }
        Ok(Ok(output)) => {
            tcg(format!("the KVM probe guest failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
        }
        Ok(Err(error)) => tcg(format!("waiting for the KVM probe guest: {error}")),
        // Dropping the future kills the probe (kill_on_drop).
        Err(_) => tcg(format!("the KVM probe guest did not finish within {timeout:?} (nested KVM too slow or hanging?)")),
    }
}

/// `QEMU emulator version 10.0.2 (…)` → `10.0.2`.
pub async fn qemu_version(qemu: &Path) -> Result<String, String> {
    let output = tokio::process::Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| format!("running {} --version: {error}", qemu.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()
        .and_then(|line| line.split("version ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("unexpected output of {} --version: {text:?}", qemu.display()))
}
