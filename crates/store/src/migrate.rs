//! Versioned schema migrations, applied in order at start-up, each in the start-up transaction.
//!
//! Each backend has its own SQL per version (`migrations/sqlite`, `migrations/postgres`) describing
//! the same logical schema. On PostgreSQL an advisory lock serialises replicas starting together.

use drover_core::query::Dialect;

use crate::db::{Db, Value};
use crate::StoreError;

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sqlite: include_str!("../migrations/sqlite/0001_registry.sql"),
        postgres: include_str!("../migrations/postgres/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "health",
        sqlite: include_str!("../migrations/sqlite/0002_health.sql"),
        postgres: include_str!("../migrations/postgres/0002_health.sql"),
    },
    Migration {
        version: 3,
        name: "shadows",
        sqlite: include_str!("../migrations/sqlite/0003_shadows.sql"),
        postgres: include_str!("../migrations/postgres/0003_shadows.sql"),
    },
    Migration {
        version: 4,
        name: "connectivity",
        sqlite: include_str!("../migrations/sqlite/0004_connectivity.sql"),
        postgres: include_str!("../migrations/postgres/0004_connectivity.sql"),
    },
    Migration {
        version: 5,
        name: "ota",
        sqlite: include_str!("../migrations/sqlite/0005_ota.sql"),
        postgres: include_str!("../migrations/postgres/0005_ota.sql"),
    },
    Migration {
        version: 6,
        name: "rollouts",
        sqlite: include_str!("../migrations/sqlite/0006_rollouts.sql"),
        postgres: include_str!("../migrations/postgres/0006_rollouts.sql"),
    },
    Migration {
        version: 7,
        name: "jobs",
        sqlite: include_str!("../migrations/sqlite/0007_jobs.sql"),
        postgres: include_str!("../migrations/postgres/0007_jobs.sql"),
    },
    Migration {
        version: 8,
        name: "fleet_rollups",
        sqlite: include_str!("../migrations/sqlite/0008_fleet_rollups.sql"),
        postgres: include_str!("../migrations/postgres/0008_fleet_rollups.sql"),
    },
    Migration {
        version: 9,
        name: "sample_chains",
        sqlite: include_str!("../migrations/sqlite/0009_sample_chains.sql"),
        postgres: include_str!("../migrations/postgres/0009_sample_chains.sql"),
    },
];

/// Arbitrary constant identifying Drover's migration lock.
const PG_MIGRATION_LOCK: i64 = 0x4452_4f56_4552;

pub async fn run<D: Db>(db: &mut D) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.query(
            "SELECT pg_advisory_xact_lock($1)",
            &[Value::Int(PG_MIGRATION_LOCK)],
        )
        .await?;
    }
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        &[],
    )
    .await?;
    let current = current_version(db).await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Config(format!(
            "the database schema is version {current}, newer than this Drover understands ({latest}); upgrade Drover"
        )));
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let sql = match db.dialect() {
            Dialect::Sqlite => migration.sqlite,
            Dialect::Postgres => migration.postgres,
        };
        for statement in split_statements(sql) {
            db.execute(&statement, &[]).await.map_err(|e| {
                StoreError::Backend(format!(
                    "migration {} ({}) failed: {e}",
                    migration.version, migration.name
                ))
            })?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        db.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[
                Value::Int(migration.version),
                Value::from(migration.name),
                Value::Int(now),
            ],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    Ok(())
}

pub async fn current_version<D: Db>(db: &mut D) -> Result<i64, StoreError> {
    let row = db
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    row.int(0)
}

/// Splits a migration file into statements at `;` line ends, dropping `--` comment lines. A `;`
/// inside a body does not end the statement: neither inside a PostgreSQL dollar-quoted function
/// body (`$$ … $$`) nor between a SQLite trigger's `BEGIN` line and its `END;` line.
fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut in_dollar_body = false;
    let mut in_trigger_body = false;
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if !in_dollar_body {
            if trimmed.eq_ignore_ascii_case("BEGIN") {
                in_trigger_body = true;
            } else if in_trigger_body && trimmed.eq_ignore_ascii_case("END;") {
                in_trigger_body = false;
            }
        }
        if line.matches("$$").count() % 2 == 1 {
            in_dollar_body = !in_dollar_body;
        }
        if trimmed.ends_with(';') && !in_dollar_body && !in_trigger_body {
            statements.push(
                std::mem::take(&mut current)
                    .trim()
                    .trim_end_matches(';')
                    .to_owned(),
            );
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::{split_statements, MIGRATIONS};

    /// Samples stored before migration 9 are linked into per-device chains, newest at the head.
    #[test]
    fn stored_samples_are_chained_per_device_by_the_migration() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let apply = |sql: &str| {
            for statement in split_statements(sql) {
                conn.execute_batch(&statement).unwrap();
            }
        };
        for migration in MIGRATIONS.iter().filter(|m| m.version < 9) {
            apply(migration.sqlite);
        }
        conn.execute_batch(
            "INSERT INTO devices (seq, id, device_type, status, created_at, updated_at) VALUES
                 (1, 'a', 't', 'active', 0, 0), (2, 'b', 't', 'active', 0, 0), (3, 'c', 't', 'active', 0, 0);
             INSERT INTO device_health (device_seq, observed_at, received_at, metrics) VALUES
                 (1, 30, 30, '{}'), (2, 20, 20, '{}'), (3, 0, 0, '{}');
             -- b's second sample was buffered: observed before its first.
             INSERT INTO heartbeat_samples (seq, device_seq, observed_at, metrics) VALUES
                 (10, 1, 10, '{}'), (11, 2, 15, '{}'), (12, 1, 20, '{}'), (13, 2, 5, '{}'), (14, 1, 30, '{}');",
        )
        .unwrap();
        apply(MIGRATIONS.iter().find(|m| m.version == 9).unwrap().sqlite);
        let rows: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT seq, prev, received_at FROM heartbeat_samples ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (10, 0, 10),
                (11, 0, 15),
                (12, 10, 20),
                (13, 11, 15),
                (14, 12, 30)
            ]
        );
        let heads: Vec<i64> = conn
            .prepare("SELECT last_sample FROM device_health ORDER BY device_seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(heads, vec![14, 13, 0]);
    }

    #[test]
    fn function_and_trigger_bodies_stay_in_one_statement() {
        let sql = "CREATE TABLE t (a INT);\n-- a comment;\nCREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  INSERT INTO t VALUES (1);\n  RETURN NULL;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER g AFTER INSERT ON t\nBEGIN\n  INSERT INTO t VALUES (2);\nEND;\nSELECT 1;";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 4, "{statements:#?}");
        assert!(statements[1].ends_with("LANGUAGE plpgsql"));
        assert!(statements[2].starts_with("CREATE TRIGGER g") && statements[2].ends_with("END"));
        assert_eq!(statements[3], "SELECT 1");
    }
}
