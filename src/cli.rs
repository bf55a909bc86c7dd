//! The command line: `serve` (the default), `migrate`, `clients`, `users`,
//! `keys`, `openapi`. Commands that create things print JSON to stdout so
//! scripts can read them; a secret is shown there once.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::app::Application;
use crate::config::{Config, ConfigError, Settings};
use crate::domain::{Email, GrantType, Role, Scope, normalise_username};
use crate::keys::{KeyState, RELOAD_SLACK, generate_and_store, key_states};
use crate::store::Db;
use crate::store::client::{
    Client, delete_client, find_client, insert_client, list_clients, update_client_secret,
};
use crate::store::key::{list_keys, retire_key};
use crate::store::session::revoke_user_sessions;
use crate::store::user::{UserRow, disable_user, insert_user, list_users, update_user_roles};
use crate::tokens::{OpaqueToken, TokenKind};

/// gatehouse: an OAuth 2.0 / OpenID Connect identity provider.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage OAuth clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the OpenAPI document (JSON).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints its id and, for a confidential client, its secret (shown once).
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// A grant the client may use: password, refresh_token, client_credentials (repeatable).
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// A scope the client may ask for besides the OIDC ones (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A public client: no secret (mobile apps, SPAs, CLIs).
        #[arg(long)]
        public: bool,
    },
    /// List clients.
    List,
    /// Delete a client; its sessions and refresh tokens end.
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Give a confidential client a new secret (shown once); the old one stops working.
    RotateSecret {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Mark the e-mail address as verified.
        #[arg(long)]
        verified: bool,
        /// A role (repeatable), e.g. admin.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List users.
    List,
    /// Replace a user's roles (repeat --role; none clears them).
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Disable a user: every session ends at once.
    Disable {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys and their state.
    List,
    /// Add a key: published at once, signing after GATEHOUSE_JWKS_MAX_AGE.
    Rotate,
    /// Stop a key signing at once; it leaves the JWKS when its last token expires.
    Retire {
        /// The key's kid (a base64url thumbprint; it may start with `-`).
        #[arg(long, allow_hyphen_values = true)]
        kid: String,
    },
}

/// Entry point of the binary.
pub async fn main() -> ExitCode {
    // A missing .env is normal; a broken one is reported.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("gatehouse: .env: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let settings = match cli.config.settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.log_format);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    match execute(
        cli.command.unwrap_or(Command::Serve),
        settings,
        &mut stdin.lock(),
        &mut stdout,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ConfigError>() {
                Some(config) => eprintln!("gatehouse: {config}"),
                None => eprintln!("gatehouse: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; output goes to `out`, a password is read from `input`.
pub async fn execute(
    command: Command,
    settings: Settings,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        Command::Serve => Application::build(settings).await?.run_until_stopped().await,
        Command::Openapi => {
            writeln!(out, "{}", crate::app::openapi_json())?;
            Ok(())
        }
        Command::Migrate => {
            let db = Db::connect(&settings.database_url).await?;
            db.migrate().await?;
            db.close().await;
            writeln!(out, "{}", json!({ "migrated": true }))?;
            Ok(())
        }
        Command::Clients(cmd) => {
            let db = open(&settings).await?;
            let value = clients(&db, cmd).await;
            db.close().await;
            print(out, value?)
        }
        Command::Users(cmd) => {
            let db = open(&settings).await?;
            let value = users(&db, &settings, cmd, input).await;
            db.close().await;
            print(out, value?)
        }
        Command::Keys(cmd) => {
            let db = open(&settings).await?;
            let value = keys(&db, &settings, cmd).await;
            db.close().await;
            print(out, value?)
        }
    }
}

async fn open(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings.database_url).await?;
    db.migrate().await?;
    Ok(db)
}

fn print(out: &mut dyn Write, value: Value) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &value)?;
    writeln!(out)?;
    Ok(())
}

fn client_json(client: &Client) -> Value {
    json!({
        "client_id": client.id,
        "name": client.name,
        "public": client.is_public(),
        "grant_types": client.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "scopes": client.scopes.iter().collect::<Vec<_>>(),
        "created_at": crate::rfc3339(client.created_at),
    })
}

async fn clients(db: &Db, cmd: ClientsCommand) -> anyhow::Result<Value> {
    match cmd {
        ClientsCommand::Create {
            name,
            grants,
            scopes,
            public,
        } => {
            let name = name.trim().to_owned();
            if name.is_empty() || name.len() > 200 || name.contains('\0') {
                bail!("--name must be 1 to 200 characters");
            }
            let mut parsed = Vec::new();
            for g in &grants {
                let grant = GrantType::parse(g).with_context(|| {
                    format!("--grant {g}: expected password, refresh_token or client_credentials")
                })?;
                if !parsed.contains(&grant) {
                    parsed.push(grant);
                }
            }
            if public && parsed.contains(&GrantType::ClientCredentials) {
                bail!(
                    "--grant client_credentials needs a confidential client (RFC 6749 §4.4); drop --public"
                );
            }
            let scope = Scope::parse(&scopes.join(" ")).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
            let secret = (!public).then(|| OpaqueToken::generate(TokenKind::ClientSecret));
            let client = Client {
                id: uuid::Uuid::new_v4().to_string(),
                name,
                secret_digest: secret.as_ref().map(OpaqueToken::digest),
                grants: parsed,
                scopes: scope,
                created_at: crate::now(),
            };
            let mut tx = db.begin_write().await?;
            insert_client(tx.conn(), &client).await?;
            tx.commit().await?;
            let mut value = client_json(&client);
            if let Some(secret) = secret {
                value["client_secret"] = Value::String(secret.expose().to_owned());
            }
            Ok(value)
        }
        ClientsCommand::List => Ok(Value::Array(
            list_clients(db.pool()).await?.iter().map(client_json).collect(),
        )),
        ClientsCommand::Delete { id } => {
            let mut tx = db.begin_write().await?;
            let deleted = delete_client(tx.conn(), &id).await?;
            tx.commit().await?;
            if !deleted {
                bail!("no client with id {id}");
            }
            Ok(json!({ "client_id": id, "deleted": true }))
        }
        ClientsCommand::RotateSecret { id } => {
            let client = find_client(db.pool(), &id)
                .await?
                .with_context(|| format!("no client with id {id}"))?;
            if client.is_public() {
                bail!("client {id} is public: it has no secret");
            }
            let secret = OpaqueToken::generate(TokenKind::ClientSecret);
            let mut tx = db.begin_write().await?;
            update_client_secret(tx.conn(), &id, &secret.digest()).await?;
            tx.commit().await?;
            Ok(json!({ "client_id": id, "client_secret": secret.expose() }))
        }
    }
}

fn user_json(user: &UserRow) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "email_verified": user.email_verified_at.is_some(),
        "name": user.name,
        "roles": user.roles(),
        "disabled": user.disabled_at.is_some(),
        "created_at": crate::rfc3339(user.created_at),
    })
}

fn parse_roles(roles: &[String]) -> anyhow::Result<String> {
    let mut parsed: Vec<Role> = roles
        .iter()
        .map(|r| Role::parse(r).map_err(|e| anyhow::anyhow!("--role {r}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed.iter().map(Role::as_str).collect::<Vec<_>>().join(" "))
}

/// SPEC §6: 8–128 characters (the minimum is configurable), no NUL.
pub fn check_password(password: &str, min_length: usize) -> anyhow::Result<()> {
    let length = password.chars().count();
    if length < min_length || length > 128 {
        bail!("the password must be {min_length} to 128 characters");
    }
    if password.contains('\0') {
        bail!("the password must not contain U+0000");
    }
    Ok(())
}

async fn users(
    db: &Db,
    settings: &Settings,
    cmd: UsersCommand,
    input: &mut dyn BufRead,
) -> anyhow::Result<Value> {
    match cmd {
        UsersCommand::Create {
            email,
            password_stdin: _,
            verified,
            roles,
            name,
        } => {
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            let roles = parse_roles(&roles)?;
            let mut line = String::new();
            input
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = SecretString::from(line.trim_end_matches(['\n', '\r']).to_owned());
            check_password(password.expose_secret(), settings.password_min_length)?;
            let hash =
                tokio::task::spawn_blocking(move || crate::password::hash_blocking(&password)).await??;
            let now = crate::now();
            let user = UserRow {
                id: uuid::Uuid::new_v4().to_string(),
                email: email.as_str().to_owned(),
                email_lower: email.lower().to_owned(),
                password_hash: hash,
                name: name
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty() && !n.contains('\0')),
                roles,
                email_verified_at: verified.then_some(now),
                disabled_at: None,
                created_at: now,
            };
            let mut tx = db.begin_write().await?;
            if crate::store::user::find_user_by_email(tx.conn(), &user.email_lower)
                .await?
                .is_some()
            {
                bail!("a user with this e-mail address already exists");
            }
            insert_user(tx.conn(), &user).await?;
            tx.commit().await?;
            Ok(user_json(&user))
        }
        UsersCommand::List => Ok(Value::Array(
            list_users(db.pool()).await?.iter().map(user_json).collect(),
        )),
        UsersCommand::SetRole { email, roles } => {
            let roles = parse_roles(&roles)?;
            let mut tx = db.begin_write().await?;
            if !update_user_roles(tx.conn(), &normalise_username(&email), &roles).await? {
                bail!("no user with e-mail {email}");
            }
            tx.commit().await?;
            Ok(
                json!({ "email": email, "roles": roles.split(' ').filter(|r| !r.is_empty()).collect::<Vec<_>>() }),
            )
        }
        UsersCommand::Disable { email } => {
            let now = crate::now();
            let mut tx = db.begin_write().await?;
            let Some(id) = disable_user(tx.conn(), &normalise_username(&email), now).await? else {
                bail!("no user with e-mail {email}");
            };
            let ended = revoke_user_sessions(tx.conn(), &id, now).await?;
            tx.commit().await?;
            Ok(json!({ "id": id, "email": email, "disabled": true, "sessions_ended": ended }))
        }
    }
}

async fn keys(db: &Db, settings: &Settings, cmd: KeysCommand) -> anyhow::Result<Value> {
    let now = crate::now();
    match cmd {
        KeysCommand::List => {
            let rows = list_keys(db.pool()).await?;
            let states = key_states(&rows, now, settings.access_token_ttl);
            Ok(Value::Array(
                rows.iter()
                    .zip(states)
                    .map(|(row, state)| {
                        json!({
                            "kid": row.kid,
                            "state": state,
                            "created_at": crate::rfc3339(row.created_at),
                            "signs_from": crate::rfc3339(row.signs_from),
                            "retired_at": row.retired_at.map(crate::rfc3339),
                        })
                    })
                    .collect(),
            ))
        }
        KeysCommand::Rotate => {
            // Verifiers may cache the JWKS for max-age: the key signs only after
            // that, plus the time instances take to publish it.
            let (kid, signs_from) =
                generate_and_store(db, &settings.keys_dir, settings.jwks_max_age + RELOAD_SLACK).await?;
            tracing::info!(event = "key_rotated", %kid, "new signing key");
            Ok(json!({ "kid": kid, "state": KeyState::Pending, "signs_from": crate::rfc3339(signs_from) }))
        }
        KeysCommand::Retire { kid } => {
            let rows = list_keys(db.pool()).await?;
            if !rows.iter().any(|r| r.kid == kid && r.retired_at.is_none()) {
                bail!("no unretired key with kid {kid}");
            }
            if !rows.iter().any(|r| r.kid != kid && r.retired_at.is_none()) {
                bail!("{kid} is the only signing key: run `gatehouse keys rotate` first");
            }
            let mut tx = db.begin_write().await?;
            retire_key(tx.conn(), &kid, now).await?;
            tx.commit().await?;
            tracing::info!(event = "key_retired", %kid, "signing key retired");
            Ok(json!({ "kid": kid, "state": KeyState::Retired, "retired_at": crate::rfc3339(now) }))
        }
    }
}
