//! Paged lists (`{"items": [...], "next_cursor": "..."}`): one page with a hint on stderr about the
//! next, or with `--all` every page, following `next_cursor` until the server has no more.
//!
//! With `--all --json` the items are written as one JSON array while pages arrive, so memory stays
//! bounded however long the list is.

use clap::Args;
use drover_proto::Page;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{emit, print_json};
use crate::cli::{CliError, ErrorKind};

/// Page size used by `--all` unless `--limit` says otherwise (the server's maximum).
const ALL_PAGE_SIZE: usize = 1000;

/// Paging options shared by every paged list.
#[derive(Debug, Clone, Default, Args)]
pub struct Paging {
    /// Page size, 1–1000 (server default 100); with --all, the size of each request.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Start at this `next_cursor` of an earlier page.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Fetch every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

/// Fetches and prints a paged list at `path`: the server's JSON with `--json` (a single array of
/// all items with `--all`), otherwise the table `render` makes of the items. `noun` names the items
/// in the messages on stderr ("no devices", "more devices: …").
pub async fn print_list<T: DeserializeOwned>(
    client: &Client,
    path: &[&str],
    mut params: Params,
    paging: &Paging,
    json: bool,
    noun: &str,
    render: impl Fn(&[T]) -> String,
) -> Result<(), CliError> {
    param(
        &mut params,
        "limit",
        paging.limit.or(paging.all.then_some(ALL_PAGE_SIZE)),
    );
    if !paging.all {
        let page = client
            .get(path, &with_cursor(&params, paging.cursor.as_deref()))
            .await?;
        if json {
            return print_json(&page);
        }
        let page: Page<T> = decode(page)?;
        print_items(&page.items, noun, &render)?;
        if let Some(cursor) = page.next_cursor {
            eprintln!(
                "more {noun}: pass --cursor {cursor} for the next page, or --all for every page"
            );
        }
        return Ok(());
    }

    let mut cursor = paging.cursor.clone();
    let mut items: Vec<T> = Vec::new();
    let mut n_items = 0usize;
    if json {
        emit("[")?;
    }
    loop {
        let page: Page<Value> = decode(
            client
                .get(path, &with_cursor(&params, cursor.as_deref()))
                .await?,
        )?;
        for item in page.items {
            if json {
                emit(&format!(
                    "{}\n{item:#}",
                    if n_items == 0 { "" } else { "," }
                ))?;
            } else {
                items.push(decode(item)?);
            }
            n_items += 1;
        }
        match page.next_cursor {
            Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                return Err(CliError::new(
                    ErrorKind::Other,
                    format!("the server returned the same cursor twice ({next}); stopping"),
                ));
            }
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if json {
        emit("\n]\n")
    } else {
        print_items(&items, noun, &render)
    }
}

fn print_items<T>(
    items: &[T],
    noun: &str,
    render: &impl Fn(&[T]) -> String,
) -> Result<(), CliError> {
    if items.is_empty() {
        eprintln!("no {noun}");
        return Ok(());
    }
    emit(&render(items))
}

fn with_cursor(params: &Params, cursor: Option<&str>) -> Params {
    let mut params = params.clone();
    param(&mut params, "cursor", cursor);
    params
}
