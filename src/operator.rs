//! # operator: the commands an operator runs against the cluster's control plane
//!
//! Owns `herald certs` (the cluster CA and its certificates), `herald cluster status`,
//! `herald keys` (the public API's keys) and `herald credits` (tenants' prepaid credits), and
//! how they reach the control plane: mutual TLS with an operator certificate. Must never print an API key except the one just created, and never
//! fall back to plaintext unless told to (`--plaintext`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::{
    ApiKeyInfo, ClusterStatusRequest, CreateApiKeyRequest, CreditsView, GetTenantCreditsRequest,
    LedgerKind, ListApiKeysRequest, RevokeApiKeyRequest, TopUpCreditsRequest,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::status_error;

/// How an operator's command reaches the control plane: with a cluster certificate.
#[derive(clap::Args)]
pub(crate) struct OperatorTls {
    /// The cluster CA (PEM).
    #[arg(long, env = "HERALD_TLS_CA", global = true)]
    ca: Option<PathBuf>,
    /// Your operator certificate (herald certs issue --operator <name>).
    #[arg(long, env = "HERALD_TLS_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, env = "HERALD_TLS_KEY", global = true)]
    key: Option<PathBuf>,
    /// Shorthand: ca.pem and the only operator-*.pem/.key in this directory.
    #[arg(long, env = "HERALD_TLS_DIR", global = true)]
    tls_dir: Option<PathBuf>,
    /// The control plane runs with tls.mode = "off" (test machines only).
    #[arg(long, global = true)]
    plaintext: bool,
}

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key (keep the key offline).
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name for the CA's subject.
        #[arg(long, default_value = "herald")]
        cluster: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a key and certificate signed by DIR's CA, for one of --node, --control or
    /// --operator.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A node id (the certificate's name is the node's id).
        #[arg(long, group = "holder")]
        node: Option<String>,
        /// A control replica id.
        #[arg(long, group = "holder")]
        control: Option<String>,
        /// A person or tool (for `herald cluster status`).
        #[arg(long, group = "holder")]
        operator: Option<String>,
        /// More DNS names or IP addresses of the holder (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = herald_tls::authority::DEFAULT_VALIDITY_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// The operator's way to the control plane: mTLS with the given certificate, or plaintext.
fn operator_dialer(tls: &OperatorTls) -> Result<herald_tls::Dialer> {
    if tls.plaintext {
        return Ok(herald_tls::Dialer::Plain);
    }
    let files = match (&tls.tls_dir, &tls.ca, &tls.cert, &tls.key) {
        (_, Some(ca), Some(cert), Some(key)) => herald_tls::config::TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        (Some(dir), ca, None, None) => {
            let operators: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("operator-") && n.ends_with(".pem"))
                })
                .collect();
            let [cert] = operators.as_slice() else {
                bail!(
                    "--tls-dir {}: expected exactly one operator-*.pem, found {}; name the files with --ca, --cert and --key",
                    dir.display(),
                    operators.len()
                );
            };
            herald_tls::config::TlsFiles {
                ca: ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
                cert: cert.clone(),
                key: cert.with_extension("key"),
            }
        }
        _ => bail!(
            "the control plane needs an operator certificate: pass --tls-dir DIR, or --ca, --cert and --key (herald certs issue --operator <name>); --plaintext for a cluster with tls.mode = \"off\""
        ),
    };
    Ok(herald_tls::Dialer::Tls(herald_tls::TlsMaterial::load(
        files,
    )?))
}

pub(crate) fn certs(command: CertsCommand) -> Result<()> {
    use herald_tls::{Authority, Identity, Role};
    match command {
        CertsCommand::Init {
            dir,
            cluster,
            force,
        } => {
            let ca = Authority::generate(&cluster)?;
            let cert = ca.write(&dir, force)?;
            println!(
                "cluster CA: {} (key: {})",
                cert.display(),
                dir.join("ca.key").display()
            );
            println!(
                "next: herald certs issue --dir {} --node <id>",
                dir.display()
            );
        }
        CertsCommand::Issue {
            dir,
            node,
            control,
            operator,
            sans,
            days,
            force,
        } => {
            let identity = match (node, control, operator) {
                (Some(name), None, None) => Identity::new(Role::Node, name)?,
                (None, Some(name), None) => Identity::new(Role::Control, name)?,
                (None, None, Some(name)) => Identity::new(Role::Operator, name)?,
                _ => bail!("give one of --node, --control or --operator"),
            };
            let ca = Authority::load(&dir)
                .with_context(|| format!("no CA in {} (herald certs init)", dir.display()))?;
            let issued = ca.issue(&identity, &sans, days)?;
            let files = Authority::write_issued(&dir, &issued, force)?;
            println!(
                "{identity}: {} and {}",
                files.cert.display(),
                files.key.display()
            );
            if identity.role != Role::Operator {
                println!("in its config:");
                println!("  [tls]");
                println!("  ca = \"{}\"", dir.join("ca.pem").display());
                println!("  cert = \"{}\"", files.cert.display());
                println!("  key = \"{}\"", files.key.display());
            }
        }
    }
    Ok(())
}

pub(crate) async fn cluster_status(control: &str, json: bool, tls: &OperatorTls) -> Result<()> {
    let mut client = control_client(control, tls).await?;
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let nodes: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                let info = n.node.clone().unwrap_or_default();
                json!({
                    "node_id": info.node_id, "address": info.api_address,
                    "internal_address": info.address, "weight": info.weight,
                    "owned_partitions": n.owned_partitions, "serving_partitions": n.serving_partitions,
                    "applied_epoch": n.applied_epoch, "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"epoch": status.epoch, "leader": status.leader_id,
                   "partition_count": status.partition_count, "nodes": nodes})
        );
        return Ok(());
    }
    println!(
        "epoch {}  leader {}  partitions {}",
        status.epoch, status.leader_id, status.partition_count
    );
    if status
        .nodes
        .iter()
        .all(|n| n.applied_epoch == 0 && n.last_heartbeat_ms_ago == 0)
        && !status.nodes.is_empty()
    {
        println!(
            "(answered by a follower replica: heartbeat figures are only known to the leader)"
        );
    }
    println!(
        "{:<16} {:<22} {:>6} {:>6} {:>8} {:>8} {:>10}",
        "node", "address", "weight", "owned", "serving", "epoch", "heartbeat"
    );
    for node in &status.nodes {
        let info = node.node.clone().unwrap_or_default();
        println!(
            "{:<16} {:<22} {:>6} {:>6} {:>8} {:>8} {:>8}ms",
            info.node_id,
            info.api_address,
            info.weight,
            node.owned_partitions,
            node.serving_partitions,
            node.applied_epoch,
            node.last_heartbeat_ms_ago
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create an API key for a tenant; prints it once (the cluster keeps only its hash).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// What the key is for (shown by `list`).
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long)]
        json: bool,
    },
    /// The keys: id, tenant, label, created, revoked.
    List {
        /// Only this tenant's keys.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Also the revoked keys.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: every node refuses it within api_key_recheck_ms.
    Revoke {
        /// The key's id (`list` shows it; it is also the part after `hk_` in the key).
        id: String,
    },
}

async fn control_client(control: &str, tls: &OperatorTls) -> Result<ControlClient<Channel>> {
    let channel = operator_dialer(tls)?.channel(control, herald_tls::Role::Control, |e| {
        e.connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
    })?;
    Ok(ControlClient::new(channel))
}

fn when(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| unix_ms.to_string())
}

fn key_json(key: &ApiKeyInfo) -> serde_json::Value {
    json!({
        "id": key.id, "tenant": key.tenant, "label": key.label,
        "created_unix_ms": key.created_unix_ms, "revoked_unix_ms": key.revoked_unix_ms,
    })
}

/// `herald keys ...`
pub(crate) async fn keys(control: &str, tls: &OperatorTls, command: KeysCommand) -> Result<()> {
    let mut client = control_client(control, tls).await?;
    match command {
        KeysCommand::Create {
            tenant,
            label,
            json,
        } => {
            let created = client
                .create_api_key(CreateApiKeyRequest { tenant, label })
                .await
                .map_err(status_error)?
                .into_inner();
            let info = created.key.unwrap_or_default();
            if json {
                let mut value = key_json(&info);
                value["api_key"] = json!(created.api_key);
                println!("{value}");
            } else {
                println!("{}", created.api_key);
                eprintln!(
                    "key {} for tenant {}: shown only now, store it as a secret",
                    info.id, info.tenant
                );
            }
        }
        KeysCommand::List { tenant, all, json } => {
            let keys = client
                .list_api_keys(ListApiKeysRequest {
                    tenant,
                    include_revoked: all,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .keys;
            if json {
                let keys: Vec<_> = keys.iter().map(key_json).collect();
                println!("{}", json!({ "keys": keys }));
                return Ok(());
            }
            println!(
                "{:<17} {:<12} {:<16} {:<16} label",
                "id", "tenant", "created (UTC)", "revoked (UTC)"
            );
            for key in &keys {
                println!(
                    "{:<17} {:<12} {:<16} {:<16} {}",
                    key.id,
                    key.tenant,
                    when(key.created_unix_ms),
                    when(key.revoked_unix_ms),
                    key.label
                );
            }
            if keys.is_empty() {
                println!(
                    "(no keys{})",
                    if all {
                        ""
                    } else {
                        "; --all shows revoked ones"
                    }
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let key = client
                .revoke_api_key(RevokeApiKeyRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .key
                .unwrap_or_default();
            println!(
                "key {} of tenant {} revoked at {} UTC",
                key.id,
                key.tenant,
                when(key.revoked_unix_ms)
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum CreditsCommand {
    /// A tenant's balance and the latest entries of its ledger.
    Show {
        #[arg(long)]
        tenant: String,
        /// Ledger entries to show (the latest).
        #[arg(long, default_value_t = 20)]
        entries: u32,
        #[arg(long)]
        json: bool,
    },
    /// Add credits to a tenant's balance (in units of the price table, e.g. 250.5).
    TopUp {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        amount: String,
        /// Why (kept in the ledger).
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// `12.345` units as micro-units, exactly (no float on the way).
fn micros_of(text: &str) -> Result<u64> {
    let price = herald_node::content::pricing::Price::parse(text)
        .map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
    if price.0 == 0 {
        bail!("--amount: must be more than 0");
    }
    Ok(price.0)
}

fn units(micros: u64) -> String {
    herald_node::content::pricing::Price(micros).to_string()
}

fn print_credits(view: &CreditsView, json: bool) {
    if json {
        let ledger: Vec<_> = view
            .ledger
            .iter()
            .map(|e| {
                json!({
                    "kind": LedgerKind::try_from(e.kind).unwrap_or_default().as_str_name(),
                    "amount_micros": e.amount_micros, "at_unix_ms": e.at_unix_ms,
                    "campaign_id": e.campaign_id, "message_id": e.message_id,
                    "attempt_id": e.attempt_id, "note": e.note,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "tenant": view.tenant, "available_micros": view.available_micros,
                "topped_up_micros": view.topped_up_micros, "spent_micros": view.spent_micros,
                "ledger_size": view.ledger_size, "ledger": ledger,
            })
        );
        return;
    }
    println!("tenant     {}", view.tenant);
    println!("available  {}", units(view.available_micros));
    println!("topped up  {}", units(view.topped_up_micros));
    println!("spent      {}", units(view.spent_micros));
    println!("ledger     {} entries", view.ledger_size);
    for entry in &view.ledger {
        let kind = LedgerKind::try_from(entry.kind)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("LEDGER_")
            .to_ascii_lowercase();
        let about = if !entry.attempt_id.is_empty() {
            entry.attempt_id.clone()
        } else if !entry.campaign_id.is_empty() {
            format!("campaign {}", entry.campaign_id)
        } else {
            entry.note.clone()
        };
        println!(
            "  {}  {kind:<8} {:>14}  {}",
            when(entry.at_unix_ms),
            units(entry.amount_micros),
            about
        );
    }
}

pub(crate) async fn credits(
    control: &str,
    tls: &OperatorTls,
    command: CreditsCommand,
) -> Result<()> {
    let mut client = control_client(control, tls).await?;
    match command {
        CreditsCommand::Show {
            tenant,
            entries,
            json,
        } => {
            let first = client
                .get_tenant_credits(GetTenantCreditsRequest {
                    tenant: tenant.clone(),
                    ledger_from: 0,
                    limit: 1,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let from = first.ledger_size.saturating_sub(u64::from(entries));
            let view = client
                .get_tenant_credits(GetTenantCreditsRequest {
                    tenant,
                    ledger_from: from,
                    limit: entries.max(1),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_credits(&view, json);
        }
        CreditsCommand::TopUp {
            tenant,
            amount,
            note,
        } => {
            let view = client
                .top_up_credits(TopUpCreditsRequest {
                    tenant,
                    amount_micros: micros_of(&amount)?,
                    note,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}: {} available",
                view.tenant,
                units(view.available_micros)
            );
        }
    }
    Ok(())
}
