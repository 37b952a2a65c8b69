//! `meridian sasl`: the users file of the Kafka listener's SASL
//! (`kafka_sasl_users_file`): add a user (or change its password), remove one,
//! list them. The file keeps SCRAM credentials, never passwords.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use meridian_kafka::sasl::{self, Mechanism, ScramCredential, Users};

#[derive(Subcommand)]
pub enum SaslCommand {
    /// Add USER to the users file (made if absent), or give it a new password: read
    /// as one line from stdin (asked for without echo on a terminal). A broker
    /// takes the change on SIGHUP.
    Add(AddArgs),
    /// Remove USER from the users file.
    Remove(FileArgs),
    /// List the users and their mechanisms.
    List(ListArgs),
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    target: FileArgs,
    /// SCRAM mechanisms to keep a credential for (PLAIN checks passwords against
    /// the first of them).
    #[arg(long = "mechanism", value_name = "NAME", default_values = ["SCRAM-SHA-256", "SCRAM-SHA-512"])]
    mechanisms: Vec<String>,
    /// PBKDF2 iterations of each credential (4096 to 16384).
    #[arg(long, default_value_t = 8192)]
    iterations: u32,
}

#[derive(Args)]
pub struct FileArgs {
    /// The user's name, as clients give it (`sasl_plain_username`).
    user: String,
    /// The users file (`kafka_sasl_users_file`).
    #[arg(long)]
    file: PathBuf,
}

#[derive(Args)]
pub struct ListArgs {
    /// The users file (`kafka_sasl_users_file`).
    #[arg(long)]
    file: PathBuf,
    /// One JSON object: user name to its mechanisms and iterations.
    #[arg(long)]
    json: bool,
}

pub fn run(command: SaslCommand) -> anyhow::Result<()> {
    match command {
        SaslCommand::Add(args) => add(args),
        SaslCommand::Remove(args) => remove(args),
        SaslCommand::List(args) => list(args),
    }
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let FileArgs { user, file } = args.target;
    sasl::check_user_name(&user).map_err(|e| anyhow::anyhow!("user `{user}`: {e}"))?;
    let mut mechanisms = Vec::new();
    for name in &args.mechanisms {
        match Mechanism::from_name(name) {
            Some(m) if Mechanism::SCRAM.contains(&m) => mechanisms.push(m),
            _ => bail!(
                "--mechanism {name}: credentials are kept for {} (PLAIN checks passwords against them)",
                Mechanism::SCRAM.map(Mechanism::name).join(", ")
            ),
        }
    }
    sasl::check_iterations(args.iterations).map_err(|e| anyhow::anyhow!("--iterations: {e}"))?;
    let mut users = read_users(&file, true)?;
    let password = read_password(&user)?;
    if password.is_empty() {
        bail!("an empty password");
    }
    let mut credentials = std::collections::BTreeMap::new();
    for mechanism in mechanisms {
        let salt = sasl::random_bytes::<16>();
        let credential =
            ScramCredential::new(mechanism, password.as_bytes(), &salt, args.iterations)
                .map_err(|e| anyhow::anyhow!("--iterations: {e}"))?;
        credentials.insert(mechanism, credential);
    }
    let names: Vec<&str> = credentials.keys().map(|m| m.name()).collect();
    let names = names.join(", ");
    let changed = users.users.insert(user.clone(), credentials).is_some();
    write_users(&file, &users)?;
    let did = if changed {
        "changed the password of"
    } else {
        "added"
    };
    println!(
        "{did} user {user} ({names}) in {}; a running broker takes it on SIGHUP",
        file.display()
    );
    Ok(())
}

fn remove(args: FileArgs) -> anyhow::Result<()> {
    let mut users = read_users(&args.file, false)?;
    if users.users.remove(&args.user).is_none() {
        bail!("no user `{}` in {}", args.user, args.file.display());
    }
    write_users(&args.file, &users)?;
    println!(
        "removed user {} from {}; a running broker takes it on SIGHUP (connections logged in as it carry on until kafka_sasl_session_lifetime_ms ends their login, if set)",
        args.user,
        args.file.display()
    );
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let users = read_users(&args.file, false)?;
    if args.json {
        let out: serde_json::Map<String, serde_json::Value> = users
            .users
            .iter()
            .map(|(name, credentials)| {
                let mechanisms: serde_json::Map<String, serde_json::Value> = credentials
                    .iter()
                    .map(|(m, c)| {
                        (
                            m.name().to_string(),
                            serde_json::json!({"iterations": c.iterations}),
                        )
                    })
                    .collect();
                (name.clone(), serde_json::Value::Object(mechanisms))
            })
            .collect();
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    if users.users.is_empty() {
        println!("no users in {}", args.file.display());
        return Ok(());
    }
    let mut rows = vec![["USER".to_string(), "MECHANISMS".to_string()]];
    rows.extend(users.users.iter().map(|(name, credentials)| {
        let mechanisms: Vec<String> = credentials
            .iter()
            .map(|(m, c)| format!("{m} ({} iterations)", c.iterations))
            .collect();
        [name.clone(), mechanisms.join(", ")]
    }));
    print!("{}", crate::table::render(&rows, &[]));
    Ok(())
}

/// The users of `file`, read as a broker reads them; none when it does not exist
/// and `may_be_new`.
fn read_users(file: &Path, may_be_new: bool) -> anyhow::Result<Users> {
    if may_be_new && !file.exists() {
        return Ok(Users::default());
    }
    meridian_server::load_sasl_users(file)
}

/// Writes the file whole under another name (readable by its owner only), then
/// renames it: a broker reloading meanwhile reads the old users or the new ones.
fn write_users(file: &Path, users: &Users) -> anyhow::Result<()> {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let text = format!(
        "# SASL users of meridian's Kafka listener (kafka_sasl_users_file), kept by\n\
         # `meridian sasl add|remove`: SCRAM credentials, no passwords.\n\n{}",
        users.to_toml()
    );
    meridian_server::tls::write_private(&partial, text.as_bytes())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))
}

/// One line of stdin; on a terminal, asked for with echo off.
fn read_password(user: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("password for {user}: ");
        std::io::stderr().flush()?;
        let echo_off = EchoOff::new(&stdin);
        stdin.lock().read_line(&mut line)?;
        drop(echo_off);
        eprintln!();
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns the terminal's echo off until dropped.
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    was: Option<rustix::termios::Termios>,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> EchoOff<'a> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let was = tcgetattr(stdin).ok();
        if let Some(was) = &was {
            let mut quiet = was.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(stdin, OptionalActions::Now, &quiet);
        }
        EchoOff { stdin, was }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Some(was) = &self.was {
            let _ =
                rustix::termios::tcsetattr(self.stdin, rustix::termios::OptionalActions::Now, was);
        }
    }
}
