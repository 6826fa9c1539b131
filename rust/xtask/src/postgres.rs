//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a
//! temporary directory, `pg_ctl start` on a free local port, and `pg_ctl stop`
//! plus removal when dropped. Nothing outside the directory is touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run, Result};

pub struct TempPostgres {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

/// Where Debian and most distributions put the server binaries.
fn find_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Finds the PostgreSQL server binaries, installing Debian's `postgresql`
/// package first when they are missing and we are root on a Debian-like
/// system.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(dir) = find_bindir() {
        return Ok(dir);
    }
    if Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: PostgreSQL not found; installing Debian's postgresql package");
        crate::system::apt(&["postgresql"])?;
        if let Some(dir) = find_bindir() {
            return Ok(dir);
        }
    }
    Err("PostgreSQL server binaries (initdb, pg_ctl) not found. Install them \
         (Debian: apt-get install -y postgresql) or pass --no-postgres to skip the PostgreSQL tests"
        .into())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TempPostgres {
    /// Creates and starts a cluster. `fsync` off makes tests fast; benchmarks
    /// keep it on.
    pub fn start(fsync: bool) -> Result<TempPostgres> {
        let bindir = ensure_installed()?;
        let as_postgres_user = crate::system::is_root();
        let dir = std::env::temp_dir().join(format!("market-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if as_postgres_user {
            // initdb refuses to run as root; the package created this user.
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let port = free_port()?;
        let pg = TempPostgres {
            bindir,
            dir,
            port,
            as_postgres_user,
        };
        let data = pg.dir.join("data");
        pg.run_pg(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "market",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        let mut opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300",
            pg.dir.display()
        );
        if !fsync {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        pg.run_pg(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &pg.dir.join("server.log").to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn run_pg(&self, program: &str, args: &[&str]) -> Result<()> {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // Their chatter would mix with the URL `cargo xtask postgres` prints.
        cmd.args(args)
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null());
        run(&mut cmd)
    }

    /// URL of the cluster's maintenance database; tests create their own
    /// databases from it.
    pub fn url(&self) -> String {
        format!("postgres://market@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run_pg(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
