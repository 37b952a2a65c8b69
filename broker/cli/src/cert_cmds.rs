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
    /// The certificates in DIR (every NAME.pem): whom each names, its serial, when it
    /// expires, and whether it is the CA, valid, expired, revoked (by DIR/crl.pem) or
    /// signed by another CA.
    List(ListArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// The directory of the CA and its certificates.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
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
        CertCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    use meridian_server::tls::{certificate_info, hex, revocation_list};
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let ca = certificate_info(&read(&args.dir.join("ca.pem"))?)
        .with_context(|| format!("{}", args.dir.join("ca.pem").display()))?;
    let crl_path = args.dir.join("crl.pem");
    let (revoked, next_update): (Vec<(String, String)>, _) = if crl_path.exists() {
        let list = revocation_list(&read(&crl_path)?)
            .with_context(|| format!("{}", crl_path.display()))?;
        let revoked = list
            .revoked
            .iter()
            .map(|r| (hex(&r.serial), r.revoked_at.date().to_string()))
            .collect();
        (revoked, list.next_update.map(|t| t.date().to_string()))
    } else {
        (Vec::new(), None)
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pem") && *p != crl_path)
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for path in &files {
        let file = path
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        let info = match certificate_info(&read(path)?) {
            Ok(info) => info,
            Err(e) => {
                eprintln!("{}: {e:#}; left out", path.display());
                continue;
            }
        };
        let revoked_on = revoked.iter().find(|(s, _)| *s == info.serial);
        let status = if info.is_ca && info.serial == ca.serial {
            "CA".to_string()
        } else if info.issuer != ca.subject {
            format!("signed by {}", info.issuer)
        } else if let Some((_, day)) = revoked_on {
            format!("revoked {day}")
        } else if info.days_left < 0 {
            "expired".to_string()
        } else {
            "valid".to_string()
        };
        rows.push((file, info, status));
    }
    if args.json {
        let certificates: Vec<serde_json::Value> = rows
            .iter()
            .map(|(file, info, status)| {
                serde_json::json!({
                    "file": file,
                    "name": info.name,
                    "serial": info.serial,
                    "expires": info.expires,
                    "days_left": info.days_left,
                    "status": status,
                })
            })
            .collect();
        let json = serde_json::json!({
            "certificates": certificates,
            "revoked": revoked.len(),
            "crl_next_update": next_update,
        });
        println!("{json}");
        return Ok(());
    }
    let mut table = vec![[
        "file".to_string(),
        "name".to_string(),
        "serial".to_string(),
        "expires".to_string(),
        "status".to_string(),
    ]];
    for (file, info, status) in &rows {
        let serial: String = info.serial.chars().take(12).collect();
        table.push([
            file.clone(),
            info.name.clone(),
            serial,
            format!("{} ({} days)", info.expires, info.days_left),
            status.clone(),
        ]);
    }
    print!("{}", crate::table::render(&table, &[]));
    match next_update {
        Some(next) => println!(
            "{}: {} revoked, next update {next}",
            crl_path.display(),
            revoked.len()
        ),
        None => println!("no {} (nothing revoked)", crl_path.display()),
    }
    Ok(())
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

/// The directory of the CA file `ca`, where `meridian cert create --dir` writes the
/// certificates it signs.
pub(crate) fn ca_dir(ca: &Path) -> &Path {
    ca.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A client certificate and its key for a broker trusting the CA file `ca`: the
/// first (by name) that `meridian cert create NAME --dir` left beside it, else
/// `NAME.pem` and `NAME.key` there for the reader to make. Never the brokers' own
/// certificate `own` (README's region recipe makes it beside the CA too): a client
/// presenting it would pass for a broker, which `acl_file` does not restrict.
pub(crate) fn client_certificate_beside(ca: &Path, own: &Path) -> (String, String) {
    let dir = ca_dir(ca);
    let own = std::fs::read(own).ok();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".pem")?.to_string();
            let signed = !["ca", "crl"].contains(&stem.as_str())
                && dir.join(format!("{stem}.key")).is_file()
                && std::fs::read(entry.path()).ok() != own;
            signed.then_some(stem)
        })
        .collect();
    names.sort();
    let name = names.into_iter().next().unwrap_or_else(|| "NAME".into());
    let path = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    (path("pem"), path("key"))
}
