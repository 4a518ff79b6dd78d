//! A downstream server in its own OS process: the test binary run again with
//! arguments that select one `#[ignore]`d test, the port in an environment variable.
//! Killing it (`SIGKILL`) stops it for real: connections are refused. It is killed on
//! drop, and the server test is expected to exit when its stdin closes, so none
//! outlives the test.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The downstream process; killed on drop.
pub struct Process {
    child: Child,
}

impl Process {
    /// Runs this test binary's ignored test `test` with `var` set to `port`.
    pub fn spawn(test: &str, var: &str, port: u16) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(var, port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the downstream process");
        Self { child }
    }

    /// Waits until the process accepts connections on `addr`; the instant it first did.
    pub async fn accepting(&mut self, addr: SocketAddr) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Instant::now();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the downstream process exited before accepting: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the downstream process does not accept connections on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the process for good (`SIGKILL`, then reaped).
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
