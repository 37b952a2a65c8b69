//! `meridian cert`: a certificate authority and the certificates it signs, for
//! brokers that require clients to present one (`tls_client_ca`, mutual TLS) and for
//! brokers of a region that should not share one self-signed identity.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create a CA: DIR/ca.pem (give it to brokers as `tls_client_ca` and to clients
    /// as `--ca`) and DIR/ca.key (keep it private; it signs certificates).
    CreateCa(CreateCaArgs),
    /// Create DIR/NAME.pem and DIR/NAME.key, a certificate for NAME signed by the CA
    /// in DIR: a client's (`--cert`, `--key`) or a broker's (`tls_cert`, `tls_key`,
    /// with `--host` for every name or address clients connect to it by).
    Create(CreateArgs),
    /// Revoke DIR/NAME.pem: write DIR/crl.pem, a revocation list signed by the CA in
    /// DIR naming it and every certificate revoked before. Brokers with
    /// `tls_client_crl = "DIR/crl.pem"` refuse it at the handshake once they read
    /// the list again (`kill -HUP`).
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The certificate's name (DIR/NAME.pem), as given to `meridian cert create`.
    name: String,
    /// The directory of the CA (ca.pem, ca.key), the certificate and crl.pem.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Days until the list's next update (brokers do not refuse a list past it).
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(Args)]
pub struct CreateCaArgs {
    /// Where the CA's files go (created if missing).
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// The CA's common name (default: "Meridian CA" and a tag of its key, so two
    /// CAs never share a name).
    #[arg(long)]
    name: Option<String>,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The certificate's common name, which brokers log for each connection it
    /// makes; also the files' name.
    name: String,
    /// The directory of the CA (ca.pem, ca.key), where the new files go too.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// A DNS name or IP address the certificate is valid for, repeatable (a
    /// broker's: what clients connect to; clients need none).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 825)]
    days: u32,
}

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa(args) => create_ca(args),
        CertCommand::Create(args) => create(args),
        CertCommand::Revoke(args) => revoke(args),
    }
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    check_days(args.days)?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let cert = args.dir.join(format!("{}.pem", args.name));
    let crl = args.dir.join("crl.pem");
    let existing = match std::fs::read_to_string(&crl) {
        Ok(pem) => Some(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", crl.display())),
    };
    let revoked = meridian_server::tls::revoke(
        &read(&cert)?,
        existing.as_deref(),
        &read(&args.dir.join("ca.pem"))?,
        &read(&args.dir.join("ca.key"))?,
        args.days,
    )
    .with_context(|| format!("revoking {}", cert.display()))?;
    // Written whole under another name, then renamed: a broker reading the list
    // meanwhile sees the old one or the new one, never half of one.
    let partial = args.dir.join("crl.pem.partial");
    std::fs::write(&partial, &revoked.crl_pem)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &crl).with_context(|| format!("writing {}", crl.display()))?;
    let was = if revoked.already {
        "was revoked already"
    } else {
        "revoked"
    };
    println!(
        "{} (serial {}) {was}; {} lists {} certificate(s)",
        cert.display(),
        revoked.serial,
        crl.display(),
        revoked.listed
    );
    println!(
        "Brokers: tls_client_crl = \"{}\", then kill -HUP each broker (or `meridian up`) to read it",
        crl.display()
    );
    Ok(())
}

fn create_ca(args: CreateCaArgs) -> anyhow::Result<()> {
    check_days(args.days)?;
    let (cert, key) = (args.dir.join("ca.pem"), args.dir.join("ca.key"));
    refuse_existing(&[&cert, &key])?;
    let (cert_pem, key_pem) = meridian_server::tls::create_ca(args.name.as_deref(), args.days)?;
    write(&args.dir, &cert, &key, &cert_pem, &key_pem)?;
    println!("CA certificate: {}", cert.display());
    println!("CA key:         {} (keep it private)", key.display());
    println!(
        "Brokers: tls_client_ca = \"{}\"; clients: --ca {}",
        cert.display(),
        cert.display()
    );
    Ok(())
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    check_days(args.days)?;
    let valid_name = !args.name.is_empty()
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !args.name.starts_with('.');
    if !valid_name {
        bail!(
            "`{}` is not a usable name: letters, digits, '-', '_' and '.' only (it names the files)",
            args.name
        );
    }
    let (ca_cert, ca_key) = (args.dir.join("ca.pem"), args.dir.join("ca.key"));
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (create the CA first: meridian cert create-ca --dir {})",
                path.display(),
                args.dir.display()
            )
        })
    };
    let (ca_cert_pem, ca_key_pem) = (read(&ca_cert)?, read(&ca_key)?);
    let (cert, key) = (
        args.dir.join(format!("{}.pem", args.name)),
        args.dir.join(format!("{}.key", args.name)),
    );
    refuse_existing(&[&cert, &key])?;
    let (cert_pem, key_pem) = meridian_server::tls::create_signed(
        &args.name,
        &args.hosts,
        args.days,
        &ca_cert_pem,
        &ca_key_pem,
    )
    .with_context(|| format!("signing with the CA in {}", args.dir.display()))?;
    write(&args.dir, &cert, &key, &cert_pem, &key_pem)?;
    println!("certificate: {}", cert.display());
    println!("key:         {}", key.display());
    Ok(())
}

fn check_days(days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!("{} exists already; not overwriting it", path.display());
        }
    }
    Ok(())
}

fn write(dir: &Path, cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    meridian_server::tls::write_private(key, key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(cert, cert_pem).with_context(|| format!("writing {}", cert.display()))
}
