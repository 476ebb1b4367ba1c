//! `drover claims …`, `drover tokens …` and `drover whoami`: claim tokens that let devices
//! provision themselves, operator API tokens, and the token in use. Secrets are printed once, when
//! they are created; the server keeps only their hashes.

use clap::Subcommand;
use drover_core::{DeviceType, GroupName, TagKey, TagValue, Timestamp};
use drover_proto::auth::{
    ClaimView, CreatedClaim, CreatedToken, NewClaim, NewToken, Role, TokenView, WhoAmI,
};
use reqwest::Method;

use crate::cli::client::{decode, Client, Params};
use crate::cli::output::{self, emit, fields, or_dash, print_json, Table};
use crate::cli::{parse_tag, CliError};

/// `drover claims` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClaimsCommand {
    /// List claim tokens (never their secrets).
    List,
    /// Show one claim token.
    Show {
        /// Claim id (clm_…).
        id: String,
    },
    /// Create a claim token; its secret is printed once, with a provisioning example.
    Create {
        /// A label for people: which factory line or batch uses it.
        #[arg(long)]
        name: String,
        /// Devices provisioned with it get this type (and may not claim another).
        #[arg(long = "type", value_name = "TYPE")]
        device_type: Option<DeviceType>,
        /// A tag every device provisioned with it gets; repeat for several.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(TagKey, TagValue)>,
        /// Static group every device provisioned with it joins.
        #[arg(long, value_name = "GROUP")]
        group: Option<GroupName>,
        /// Lifetime such as 7d or 12h (server default 24h, at most 365d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// How many devices may use it; unlimited when absent.
        #[arg(long, value_name = "N")]
        max_uses: Option<u64>,
    },
    /// Revoke a claim token; devices already provisioned with it keep their credentials.
    Revoke {
        /// Claim id (clm_…).
        id: String,
    },
}

/// `drover tokens` subcommands (admin role).
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List operator tokens (never their secrets).
    List,
    /// Create an operator token; its secret is printed once.
    Create {
        /// A label for people: who or what uses the token.
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long, value_parser = Role::parse)]
        role: Role,
        /// Lifetime such as 30d or 12h; no expiry when absent.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Revoke an operator token at once.
    Revoke {
        /// Token id (tok_…).
        id: String,
    },
}

/// Runs a `drover claims` subcommand.
pub async fn run_claims(
    client: &Client,
    json: bool,
    command: ClaimsCommand,
) -> Result<(), CliError> {
    let now = output::now();
    match command {
        ClaimsCommand::List => {
            let claims = client.get(&["claims"], &Params::new()).await?;
            if json {
                return print_json(&claims);
            }
            let claims: Vec<ClaimView> = decode(claims)?;
            if claims.is_empty() {
                eprintln!("no claim tokens");
                return Ok(());
            }
            emit(&claim_table(&claims, now))
        }
        ClaimsCommand::Show { id } => {
            let claim = client.get(&["claims", &id], &Params::new()).await?;
            if json {
                return print_json(&claim);
            }
            emit(&claim_block(&decode(claim)?, now))
        }
        ClaimsCommand::Create {
            name,
            device_type,
            tags,
            group,
            expires_in,
            max_uses,
        } => {
            let new = NewClaim {
                name,
                device_type,
                tags: tags.into_iter().collect(),
                group,
                expires_in,
                max_uses,
            };
            let created = client.call_json(Method::POST, &["claims"], &new).await?;
            if json {
                return print_json(&created);
            }
            let created: CreatedClaim = decode(created)?;
            let provision_url = client.url(&["api", "device", "v1", "provision"]);
            emit(&created_claim_text(&created, provision_url.as_str(), now))
        }
        ClaimsCommand::Revoke { id } => {
            let claim = client.call(Method::DELETE, &["claims", &id]).await?;
            if json {
                return print_json(&claim);
            }
            emit(&format!("Revoked claim token {id}; devices already provisioned with it keep their credentials.\n"))
        }
    }
}

/// Runs a `drover tokens` subcommand.
pub async fn run_tokens(
    client: &Client,
    json: bool,
    command: TokensCommand,
) -> Result<(), CliError> {
    let now = output::now();
    match command {
        TokensCommand::List => {
            let tokens = client.get(&["tokens"], &Params::new()).await?;
            if json {
                return print_json(&tokens);
            }
            emit(&token_table(&decode::<Vec<TokenView>>(tokens)?, now))
        }
        TokensCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let created = client
                .call_json(
                    Method::POST,
                    &["tokens"],
                    &NewToken {
                        name,
                        role,
                        expires_in,
                    },
                )
                .await?;
            if json {
                return print_json(&created);
            }
            let created: CreatedToken = decode(created)?;
            let token = &created.token;
            let expiry = token.expires_at.map_or_else(
                || "never expires".to_owned(),
                |at| format!("expires {}", output::time(at)),
            );
            emit(&format!(
                "Created token {} {:?} with role {} ({expiry}).\n\n\
                 Token secret (shown only this once):\n\n    {secret}\n\n\
                 Use it with:\n\n    export DROVER_TOKEN={secret}\n",
                token.id,
                token.name,
                token.role.as_str(),
                secret = created.secret,
            ))
        }
        TokensCommand::Revoke { id } => {
            let token = client.call(Method::DELETE, &["tokens", &id]).await?;
            if json {
                return print_json(&token);
            }
            emit(&format!("Revoked token {id}.\n"))
        }
    }
}

/// `drover whoami`: the token this CLI uses.
pub async fn whoami(client: &Client, json: bool) -> Result<(), CliError> {
    let me = client.get(&["whoami"], &Params::new()).await?;
    if json {
        return print_json(&me);
    }
    let me: WhoAmI = decode(me)?;
    emit(&fields(&[
        ("Token", me.token_id),
        ("Name", me.name),
        ("Role", me.role.as_str().to_owned()),
        ("Server", client.server().to_string()),
    ]))
}

/// The claim table: one row per claim token.
pub fn claim_table(claims: &[ClaimView], now: Timestamp) -> String {
    let mut table = Table::new(&[
        "ID", "NAME", "TYPE", "TAGS", "GROUP", "USES", "EXPIRES", "STATE",
    ]);
    for claim in claims {
        table.row(vec![
            claim.id.clone(),
            claim.name.clone(),
            or_dash(claim.device_type.as_ref()),
            output::tags(&claim.tags, ","),
            or_dash(claim.group.as_ref()),
            uses(claim),
            output::relative(claim.expires_at, now),
            claim_state(claim, now).to_owned(),
        ]);
    }
    table.render()
}

/// One claim token as a key-value block.
pub fn claim_block(claim: &ClaimView, now: Timestamp) -> String {
    fields(&[
        ("ID", claim.id.clone()),
        ("Name", claim.name.clone()),
        ("State", claim_state(claim, now).to_owned()),
        ("Device type", or_dash(claim.device_type.as_ref())),
        ("Tags", output::tags(&claim.tags, "\n")),
        ("Group", or_dash(claim.group.as_ref())),
        ("Uses", uses(claim)),
        (
            "Expires",
            format!(
                "{} ({})",
                output::time(claim.expires_at),
                output::relative(claim.expires_at, now)
            ),
        ),
        (
            "Created",
            format!("{} by {}", output::time(claim.created_at), claim.created_by),
        ),
        ("Revoked", or_dash(claim.revoked_at.map(output::time))),
    ])
}

/// What `claims create` prints: the claim, its secret once, and a provisioning request to copy.
pub fn created_claim_text(created: &CreatedClaim, provision_url: &str, now: Timestamp) -> String {
    let claim = &created.claim;
    let mut body = serde_json::json!({ "claim_token": created.token, "hardware_id": "SN-0001" });
    if claim.device_type.is_none() {
        body["device_type"] = "DEVICE-TYPE".into();
    }
    let type_note = if claim.device_type.is_none() {
        " and DEVICE-TYPE with its type (this claim token sets none)"
    } else {
        ""
    };
    format!(
        "Created claim token {} {:?} (expires {}, {}).\n\n\
         Claim token (shown only this once):\n\n    {}\n\n\
         A device provisions itself with it (replace SN-0001 with its serial number{type_note}):\n\n    \
         curl -X POST '{provision_url}' \\\n      -H 'Content-Type: application/json' \\\n      -d '{body}'\n",
        claim.id,
        claim.name,
        output::relative(claim.expires_at, now),
        match claim.max_uses {
            Some(max) => format!("at most {max} device(s)"),
            None => "unlimited uses".to_owned(),
        },
        created.token,
    )
}

/// The token table: one row per operator token.
pub fn token_table(tokens: &[TokenView], now: Timestamp) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    for token in tokens {
        let state = match (token.revoked_at, token.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(at)) if at <= now => "expired",
            _ => "active",
        };
        table.row(vec![
            token.id.clone(),
            token.name.clone(),
            token.role.as_str().to_owned(),
            output::time(token.created_at),
            token
                .expires_at
                .map_or_else(|| "never".to_owned(), |at| output::relative(at, now)),
            output::last_seen(token.last_used_at, now),
            state.to_owned(),
        ]);
    }
    table.render()
}

fn uses(claim: &ClaimView) -> String {
    match claim.max_uses {
        Some(max) => format!("{}/{max}", claim.uses),
        None => claim.uses.to_string(),
    }
}

fn claim_state(claim: &ClaimView, now: Timestamp) -> &'static str {
    if claim.revoked_at.is_some() {
        "revoked"
    } else if claim.expires_at <= now {
        "expired"
    } else if claim.max_uses.is_some_and(|max| claim.uses >= max) {
        "used up"
    } else {
        "active"
    }
}
