//! The `mollie-gateway` command: wiring only.
//!
//! - `run` (default): serve the proxy (see `app::build_server`).
//! - `merchants add ID (--refresh-token T | --code C [--redirect-uri U] | --api-key - | --org-token -)`,
//!   `merchants list`,
//!   `merchants remove ID [--keep-authorization]`: act on the configured credential store
//!   (`remove` revokes at Mollie first; exit code 3 when that did not happen).
//! - `store migrate --from A --to B`: copy every merchant between stores (file ⇄ Redis).
//! - `store rekey`: re-encrypt every stored record under the newest key of
//!   `store.encryption_key_file`.
//! - `clients new NAME [--merchants m1,m2] [--test]`: a new gateway key for a calling service.
//! - `check-config`: validate and print the effective configuration, secrets masked.
//!
//! Every subcommand takes `--config PATH` (default `conf/gateway.toml`, or
//! `$MOLLIE_GATEWAY_CONFIG`); `MOLLIE_GATEWAY__SECTION__KEY` variables override the file.

use clap::{Parser, Subcommand};
use mollie_gateway::app::{self, Parts, StartError};
use mollie_gateway::config::{self, LogFormat, Settings, Source};
use mollie_gateway::reload::ConfigSource;
use mollie_gateway::store::crypto::Keyring;
use mollie_gateway::store::{CredentialKind, StaticCredential};
use mollie_gateway::types::{MerchantId, RefreshToken, Secret};
use mollie_gateway::{access_log, clients};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: pingora and tokio allocate per request, and glibc's
/// malloc was 13 % of the gateway's CPU and fragmented under token churn (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mollie-gateway",
    version,
    about = "Mollie Connect token-injecting gateway"
)]
struct Cli {
    /// Configuration file (default conf/gateway.toml; built-in defaults when that is absent).
    #[arg(long, global = true, env = "MOLLIE_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy (the default).
    Run {
        /// Take over the listening sockets of a running instance (pingora graceful upgrade).
        #[arg(short = 'u', long)]
        upgrade: bool,
    },
    /// Manage merchants in the credential store.
    #[command(subcommand)]
    Merchants(MerchantsCommand),
    /// Act on the credential store as a whole.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Make gateway keys for calling services (`[clients.<name>]`).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
}

#[derive(Subcommand)]
enum MerchantsCommand {
    /// Store a merchant: a refresh token as is, an authorization code exchanged now, or a
    /// static API key / organization token (from standard input), used as it is.
    #[command(group = clap::ArgGroup::new("credential").required(true).multiple(false))]
    Add {
        id: String,
        /// The merchant's refresh token (`-` reads it from standard input).
        #[arg(long, group = "credential")]
        refresh_token: Option<String>,
        /// An authorization code from Mollie's redirect (`-` reads it from standard input).
        #[arg(long, group = "credential")]
        code: Option<String>,
        /// A static API key (`live_…`/`test_…`) used as it is, never refreshed: only `-`,
        /// which reads it from standard input (never a command-line argument).
        #[arg(long, group = "credential", value_name = "-")]
        api_key: Option<String>,
        /// A static organization access token (`access_…`), never refreshed: only `-`,
        /// which reads it from standard input.
        #[arg(long, group = "credential", value_name = "-")]
        org_token: Option<String>,
        /// The redirect URI the code was issued for (default: oauth.redirect_uri if set).
        #[arg(long, requires = "code")]
        redirect_uri: Option<String>,
    },
    /// List stored merchants (no secrets).
    List,
    /// Revoke a merchant's authorization at Mollie, then remove it from the store (exit code
    /// 3 when Mollie could not confirm: the gateway retries the revocation).
    Remove {
        id: String,
        /// Forget the merchant without revoking its authorization at Mollie.
        #[arg(long)]
        keep_authorization: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-encrypt every record under the newest key (the last line of the key file).
    Rekey,
    /// Copy every merchant from one store into another (file ⇄ Redis); never overwrites a
    /// newer record of the target (a conflict: exit code 4). A store is `file:PATH`, `file`
    /// (store.path), `redis` (store.redis_url) or a redis://, rediss://, redis+unix:// URL.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Print a new random key (once) and the `[clients.NAME]` lines holding its hash.
    New {
        name: String,
        /// Merchant ids the client may act for, comma-separated (default: all, `*`).
        #[arg(long, value_delimiter = ',')]
        merchants: Vec<String>,
        /// A `test_` key: confined to test data.
        #[arg(long)]
        test: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let (settings, source) = match config::load(cli.config.as_deref(), &env) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("mollie-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Run { upgrade } => {
            init_logging(&settings);
            log_source(&source);
            let env = env
                .into_iter()
                .filter(|(k, _)| k.starts_with(config::ENV_PREFIX))
                .collect();
            let source = ConfigSource { source, env };
            match app::build_server(settings, source, upgrade) {
                Ok(server) => {
                    server.run(pingora::server::RunArgs::default());
                    access_log::flush();
                    std::process::exit(0)
                }
                Err(e) => Err(e),
            }
        }
        Command::CheckConfig => {
            log_source_to_stdout(&source);
            print!("{}", settings.to_masked_toml());
            if let Some(hint) = settings.oauth_setup_hint() {
                eprintln!("note: {hint}");
            }
            if let Some(open) = settings.open_gateway_warning() {
                eprintln!("note: {open}");
            }
            if let Some(plain) = settings.plaintext_store_warning() {
                eprintln!("note: {plain}");
            }
            Ok(())
        }
        Command::Merchants(cmd) => match merchants(settings, cmd) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Store(StoreCommand::Rekey) => rekey(settings),
        Command::Store(StoreCommand::Migrate { from, to }) => match migrate(settings, &from, &to) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Clients(ClientsCommand::New {
            name,
            merchants,
            test,
        }) => new_client(&name, merchants, test),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mollie-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log_source(source: &Source) {
    match source {
        Source::File(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        Source::EmbeddedDefaults => tracing::info!(
            "{} not found: using built-in defaults",
            config::DEFAULT_CONFIG_PATH
        ),
    }
}

fn log_source_to_stdout(source: &Source) {
    match source {
        Source::File(p) => println!("# effective configuration from {}", p.display()),
        Source::EmbeddedDefaults => println!("# effective configuration: built-in defaults"),
    }
}

/// One subscriber for our spans and pingora's `log` records; `RUST_LOG` wins over `[log]`.
fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    access_log::install(settings.log.format);
}

fn secret_arg(value: String, what: &str) -> Result<String, StartError> {
    if value != "-" {
        return Ok(value);
    }
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .map_err(|e| StartError(format!("cannot read the {what} from standard input: {e}")))?;
    let trimmed = buf.trim();
    if trimmed.is_empty() {
        return Err(StartError(format!("the {what} on standard input is empty")));
    }
    Ok(trimmed.to_string())
}

/// `clients new`: the key on stdout once, then the configuration lines (hash only).
fn new_client(name: &str, merchants: Vec<String>, test: bool) -> Result<(), StartError> {
    let merchants = if merchants.is_empty() {
        vec!["*".to_string()]
    } else {
        merchants
    };
    let entry = config::ClientSettings {
        key_sha256: Vec::new(),
        merchants: merchants.clone(),
        default_merchant: String::new(),
    };
    let mut check = Settings::default();
    check.clients.insert(name.to_string(), entry);
    if let Err(e) = check.validate() {
        // Only the name and the merchant ids can be wrong here (the hash is added below).
        let problems: Vec<_> = e
            .problems
            .into_iter()
            .filter(|p| !p.contains("key_sha256"))
            .collect();
        if !problems.is_empty() {
            return Err(StartError(problems.join("; ")));
        }
    }
    let key = clients::new_key(test)
        .map_err(|_| StartError("the system's random number generator failed".into()))?;
    let list = merchants
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("{key}");
    println!(
        "# ^ the key of client {name}, shown only now: put it in the service's Mollie API key \
         setting.\n# Add to the gateway's configuration:\n[clients.{name}]\n\
         key_sha256 = [\"{}\"]\nmerchants = [{list}]",
        clients::sha256_hex(&key)
    );
    if merchants.iter().any(|m| m == "*") {
        println!("# merchants = [\"*\"] lets it act for every merchant; list ids to narrow it.");
    }
    Ok(())
}

/// `store rekey`: every record re-encrypted under the newest key, under the store's lock and
/// replaced atomically like any other write.
fn rekey(settings: Settings) -> Result<(), StartError> {
    let key_file = settings.store.encryption_key_file.clone();
    let conf = app::server_conf(&settings);
    let parts = Parts::new(settings, &conf)?;
    let rt = cli_runtime()?;
    let count = rt
        .block_on(parts.store.rekey())
        .map_err(|e| StartError(e.to_string()))?;
    let key_id = Keyring::load(Path::new(&key_file))
        .map(|k| k.current_id().to_string())
        .unwrap_or_else(|_| "the newest key".into());
    println!("re-encrypted {count} record(s) under key {key_id}");
    Ok(())
}

/// Exit code of `store migrate` when records were kept in the target as newer (conflicts).
const MIGRATE_CONFLICTS: u8 = 4;

/// `store migrate`: counts on stdout, each conflict and failure on stderr (naming the
/// merchant, never a secret); exit 1 when a merchant could not be copied (the source keeps
/// it: run again), 4 when only conflicts remain.
fn migrate(settings: Settings, from: &str, to: &str) -> Result<ExitCode, StartError> {
    let source =
        app::open_store_named(&settings, from).map_err(|e| StartError(format!("--from: {e}")))?;
    let target =
        app::open_store_named(&settings, to).map_err(|e| StartError(format!("--to: {e}")))?;
    let rt = cli_runtime()?;
    let done = rt
        .block_on(mollie_gateway::store::migrate::migrate(&*source, &*target))
        .map_err(|e| StartError(format!("--from: {e}; nothing was copied")))?;
    for id in &done.conflicts {
        eprintln!(
            "conflict: merchant {id} changed later in the target (or differently at the same \
             second); kept as it is there"
        );
    }
    for (id, e) in &done.failed {
        eprintln!("failed: merchant {id}: {e}");
    }
    println!("{}", done.counts());
    if !done.failed.is_empty() {
        let ids: Vec<String> = done.failed.iter().map(|(id, _)| id.to_string()).collect();
        return Err(StartError(format!(
            "{} merchant(s) not copied ({}); the source still holds them: run again once the \
             target answers",
            ids.len(),
            ids.join(", ")
        )));
    }
    if !done.conflicts.is_empty() {
        return Ok(ExitCode::from(MIGRATE_CONFLICTS));
    }
    Ok(ExitCode::SUCCESS)
}

/// `merchants …`: the exit code ([`NOT_REVOKED`] for a removal Mollie did not confirm).
fn merchants(settings: Settings, cmd: MerchantsCommand) -> Result<ExitCode, StartError> {
    let conf = app::server_conf(&settings);
    let parts = Parts::new(settings, &conf)?;
    let rt = cli_runtime()?;
    let result = rt.block_on(async {
        match cmd {
            MerchantsCommand::Add {
                id,
                refresh_token,
                code,
                redirect_uri,
                api_key,
                org_token,
            } => {
                let id = parse_id(&id)?;
                match (refresh_token, code, api_key, org_token) {
                    (Some(token), ..) => add_refresh_token(&parts, &id, token).await?,
                    (None, Some(code), ..) => add_code(&parts, &id, code, redirect_uri).await?,
                    (None, None, Some(key), _) => {
                        add_static(&parts, &id, CredentialKind::ApiKey, key).await?
                    }
                    (None, None, None, Some(token)) => {
                        add_static(&parts, &id, CredentialKind::OrgToken, token).await?
                    }
                    _ => {} // clap requires one of them
                }
                Ok(ExitCode::SUCCESS)
            }
            MerchantsCommand::List => list_merchants(&parts).await,
            MerchantsCommand::Remove {
                id,
                keep_authorization,
            } => remove_merchant(&parts, parse_id(&id)?, keep_authorization).await,
        }
    });
    // The token client's pooled connections belong to `rt`: dropped while it still exists.
    drop(parts);
    result
}

/// The one runtime of a CLI command.
fn cli_runtime() -> Result<tokio::runtime::Runtime, StartError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start a runtime: {e}")))
}

fn parse_id(id: &str) -> Result<MerchantId, StartError> {
    MerchantId::parse(id).map_err(|e| StartError(format!("merchant id {id:?} {e}")))
}

/// `merchants add ID --refresh-token T`: stored as it is (verified at its first refresh).
async fn add_refresh_token(
    parts: &Parts,
    id: &MerchantId,
    token: String,
) -> Result<(), StartError> {
    let token = RefreshToken::new(secret_arg(token, "refresh token")?);
    parts
        .tokens
        .add_refresh_token(id, token)
        .await
        .map_err(|e| StartError(e.to_string()))?;
    println!("stored merchant {id} (refresh token not verified yet)");
    Ok(())
}

/// `merchants add ID --api-key -` / `--org-token -`: read from stdin, shape-checked, stored.
async fn add_static(
    parts: &Parts,
    id: &MerchantId,
    kind: CredentialKind,
    arg: String,
) -> Result<(), StartError> {
    let what = match kind {
        CredentialKind::ApiKey => "API key",
        _ => "organization access token",
    };
    if arg != "-" {
        let flag = kind.as_str().replace('_', "-");
        return Err(StartError(format!(
            "--{flag} takes only `-` and reads the {what} from standard input (a command-line \
             argument would show in the process list and the shell history)"
        )));
    }
    let value = secret_arg(arg, what)?;
    let credential = StaticCredential::parse(kind, &value).map_err(StartError)?;
    parts
        .tokens
        .add_static(id, credential)
        .await
        .map_err(|e| StartError(e.to_string()))?;
    println!("stored merchant {id} ({what}, used as it is, never refreshed)");
    Ok(())
}

/// `merchants add ID --code C`: the code exchanged now, the result stored.
async fn add_code(
    parts: &Parts,
    id: &MerchantId,
    code: String,
    redirect_uri: Option<String>,
) -> Result<(), StartError> {
    let code = Secret::new(secret_arg(code, "authorization code")?);
    parts.prepare().await?;
    let configured = Some(parts.settings.oauth.redirect_uri.clone()).filter(|u| !u.is_empty());
    let redirect = redirect_uri.or(configured);
    parts
        .tokens
        .add_authorization_code(id, &code, redirect.as_deref())
        .await
        .map_err(|e| StartError(format!("cannot onboard {id}: {e}")))?;
    println!("stored merchant {id} (authorization code exchanged)");
    Ok(())
}

/// `merchants list`: ids, state and last change; never a secret.
async fn list_merchants(parts: &Parts) -> Result<ExitCode, StartError> {
    let all = parts
        .store
        .load_all()
        .await
        .map_err(|e| StartError(e.to_string()))?;
    println!(
        "{:<40} {:<8} {:<15} updated_at",
        "merchant", "state", "credential_kind"
    );
    for (id, m) in all {
        let state = match (m.removing, m.revoked) {
            (true, _) => "removing",
            (false, true) => "revoked",
            (false, false) => "active",
        };
        let kind = m.credential_kind().as_str();
        println!(
            "{:<40} {:<8} {:<15} {}",
            id.as_str(),
            state,
            kind,
            m.updated_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `merchants remove`: revoke (unless kept), forget; [`NOT_REVOKED`] when Mollie did not
/// confirm the revocation (the message says what happened and what happens next).
async fn remove_merchant(
    parts: &Parts,
    id: MerchantId,
    keep: bool,
) -> Result<ExitCode, StartError> {
    if !keep {
        parts.prepare().await?;
    }
    let removal = parts
        .tokens
        .remove_merchant(&id, !keep)
        .await
        .map_err(|e| StartError(e.to_string()))?
        .ok_or_else(|| StartError(format!("no merchant {id} in the store")))?;
    use mollie_gateway::tokens::RevocationOutcome as O;
    let not_revoked = match removal.outcome {
        O::Revoked | O::AlreadyInvalid => {
            println!("removed merchant {id} (authorization revoked at Mollie)");
            return Ok(ExitCode::SUCCESS);
        }
        O::StaticCredential => {
            println!(
                "removed merchant {id} (a static credential: nothing revoked at Mollie; revoke \
                 the key or token in Mollie's dashboard if it must stop working)"
            );
            return Ok(ExitCode::SUCCESS);
        }
        O::Skipped => {
            println!("removed merchant {id} (authorization kept at Mollie)");
            return Ok(ExitCode::SUCCESS);
        }
        O::NotConfigured => format!(
            "removed merchant {id}, but NOT revoked at Mollie: no OAuth app is configured \
             (oauth.client_id/client_secret)"
        ),
        O::Failed => format!(
            "merchant {id} is no longer served, but its revocation at Mollie failed ({}); the \
             record stays `removing` and a running gateway retries the revocation",
            removal.error.unwrap_or_default()
        ),
    };
    eprintln!("mollie-gateway: {not_revoked}");
    Ok(ExitCode::from(NOT_REVOKED))
}

/// The exit code of a removal whose revocation at Mollie did not happen.
const NOT_REVOKED: u8 = 3;
