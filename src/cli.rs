//! The command line: `serve` (the default), `migrate`, `clients`, `users`,
//! `keys`, `openapi`. Commands that create things print JSON to stdout so
//! scripts can read them; a secret is shown there once.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::admin::{self, ClientSpec};
use crate::app::Application;
use crate::config::{Config, ConfigError, Settings};
use crate::domain::{Email, Password, normalise_username};
use crate::keys::KeyState;
use crate::store::Db;
use crate::store::client::{Client, list_clients};
use crate::store::user::{UserRow, find_user_by_email, insert_user, list_users};

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
        /// A grant the client may use: password, refresh_token, client_credentials,
        /// authorization_code (repeatable).
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// A scope the client may ask for besides the OIDC ones (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A public client: no secret (mobile apps, SPAs, CLIs).
        #[arg(long)]
        public: bool,
        /// Where authorization codes may be sent, matched exactly (repeatable).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Where `/logout` may send the browser afterwards, matched exactly (repeatable).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// The operator's own app: no consent page; may use the `/session` cookie API.
        #[arg(long)]
        first_party: bool,
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

/// Entry point of the binary; `serving` runs once the server is built and
/// about to serve (the binary returns start-up memory to the system there).
pub async fn main(serving: fn()) -> ExitCode {
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
    let logs = crate::telemetry::init(settings.log_format);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings, serving).await,
        command => execute(command, settings, &mut stdin.lock(), &mut stdout).await,
    };
    // Every buffered log line is written before the outcome's line.
    drop(logs);
    match result {
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

async fn serve(settings: Settings, serving: fn()) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    serving();
    app.run_until_stopped().await
}

/// Runs one command; output goes to `out`, a password is read from `input`.
pub async fn execute(
    command: Command,
    settings: Settings,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings, || {}).await,
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
        "redirect_uris": client.redirect_uris.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "post_logout_redirect_uris": client
            .post_logout_redirect_uris
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
        "first_party": client.first_party,
        "created_at": crate::rfc3339(client.created_at),
    })
}

/// The admin layer's error as a one-line CLI error.
fn cli_error(e: crate::error::Error) -> anyhow::Error {
    anyhow::anyhow!(e.to_cli_message())
}

async fn clients(db: &Db, cmd: ClientsCommand) -> anyhow::Result<Value> {
    match cmd {
        ClientsCommand::Create {
            name,
            grants,
            scopes,
            public,
            redirect_uris,
            post_logout_redirect_uris,
            first_party,
        } => {
            let spec = ClientSpec {
                name: Some(name),
                grants: Some(grants),
                scopes: Some(scopes),
                public,
                redirect_uris: Some(redirect_uris),
                post_logout_redirect_uris: Some(post_logout_redirect_uris),
                first_party: Some(first_party),
            };
            let (client, secret) = admin::create_client(db, spec, crate::now())
                .await
                .map_err(cli_error)?;
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
            admin::delete_client(db, &id).await.map_err(cli_error)?;
            Ok(json!({ "client_id": id, "deleted": true }))
        }
        ClientsCommand::RotateSecret { id } => {
            let secret = admin::rotate_client_secret(db, &id).await.map_err(cli_error)?;
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
            let roles = admin::parse_roles(&roles).map_err(cli_error)?;
            let mut line = String::new();
            input
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let line = SecretString::from(line);
            // SPEC §6: NFKC, 8–128 characters, no NUL, not a common password.
            let password = Password::parse(
                line.expose_secret().trim_end_matches(['\n', '\r']),
                settings.password_min_length,
            )
            .map_err(|e| anyhow::anyhow!("the password {e}"))?
            .into_secret();
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
            if !insert_user(tx.conn(), &user).await? {
                bail!("a user with this e-mail address already exists");
            }
            tx.commit().await?;
            Ok(user_json(&user))
        }
        UsersCommand::List => Ok(Value::Array(
            list_users(db.pool()).await?.iter().map(user_json).collect(),
        )),
        UsersCommand::SetRole { email, roles } => {
            let user = user_by_email(db, &email).await?;
            let user = admin::set_roles(db, &user.id, &roles).await.map_err(cli_error)?;
            Ok(user_json(&user))
        }
        UsersCommand::Disable { email } => {
            let user = user_by_email(db, &email).await?;
            let user = admin::set_disabled(db, &user.id, true, crate::now())
                .await
                .map_err(cli_error)?;
            Ok(user_json(&user))
        }
    }
}

async fn user_by_email(db: &Db, email: &str) -> anyhow::Result<UserRow> {
    find_user_by_email(db.pool(), &normalise_username(email))
        .await?
        .with_context(|| format!("no user with e-mail {email}"))
}

async fn keys(db: &Db, settings: &Settings, cmd: KeysCommand) -> anyhow::Result<Value> {
    let now = crate::now();
    match cmd {
        KeysCommand::List => {
            let keys = admin::keys(db, settings, now).await.map_err(cli_error)?;
            Ok(Value::Array(
                keys.iter()
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
            let (kid, signs_from) = admin::rotate_key(db, settings).await.map_err(cli_error)?;
            Ok(json!({ "kid": kid, "state": KeyState::Pending, "signs_from": crate::rfc3339(signs_from) }))
        }
        KeysCommand::Retire { kid } => {
            admin::retire_key(db, &kid, now).await.map_err(|e| match e {
                crate::error::Error::Problem(p) if p.status == 404 => {
                    anyhow::anyhow!("no unretired key with kid {kid}")
                }
                e => cli_error(e),
            })?;
            Ok(json!({ "kid": kid, "state": KeyState::Retired, "retired_at": crate::rfc3339(now) }))
        }
    }
}
