//! A real SMTP server for tests: aiosmtpd, run by `tests/peers/smtp_peer.py` of this crate.
//!
//! Needs `python3` with aiosmtpd (`python3 -m pip install aiosmtpd`; `.ci/run` installs it).
//! A missing interpreter or module is a panic with that hint, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

pub const INSTALL_HINT: &str =
    "the SMTP peer needs python3 with aiosmtpd: run `python3 -m pip install aiosmtpd`";

/// The peer script (see its docstring for the recipients that provoke errors).
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_peer.py")
}

/// A running aiosmtpd; killed when dropped. Every accepted mail is one `.eml` file in `dir`.
pub struct SmtpPeer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _child: Child,
}

impl SmtpPeer {
    /// Starts the peer on an OS-assigned loopback port (bounded wait for readiness).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut child = Command::new("python3")
            .arg(script())
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("smtp_peer.py: no stdout")
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("smtp_peer.py did not report its port within 10 s"));
        let port = match first {
            Ok(Some(line)) if line.starts_with("PORT ") => line[5..]
                .trim()
                .parse::<u16>()
                .unwrap_or_else(|e| panic!("smtp_peer.py port {line:?}: {e}")),
            other => {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        stderr.read_to_string(&mut err),
                    )
                    .await;
                }
                panic!("smtp_peer.py failed to start ({other:?}): {err}\n{INSTALL_HINT}");
            }
        };
        SmtpPeer {
            port,
            dir,
            _child: child,
        }
    }

    /// The mails received so far, oldest first (by file name).
    pub fn mails(&self) -> Vec<PathBuf> {
        let mut mails: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        mails.sort();
        mails
    }

    /// The texts of the mails received so far.
    pub fn mail_texts(&self) -> Vec<String> {
        self.mails()
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}
