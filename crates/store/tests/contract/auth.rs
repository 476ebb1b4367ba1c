//! Operator API tokens: the first-start admin token, creation, listing, revocation, expiry.

use drover_proto::auth::{NewToken, Role};
use drover_store::StoreError;

use crate::support::*;

contract_tests! {
    /// The last usable admin token cannot be revoked: nobody could manage tokens afterwards.
    async fn the_last_admin_token_cannot_be_revoked(store: Store) {
        store.bootstrap_admin(None, at(0)).await.unwrap();
        let first = store.list_tokens().await.unwrap()[0].id.clone();
        let err = store.revoke_token(&operator(), &first, at(1)).await.unwrap_err();
        assert_eq!(err.to_string(), format!("token {first} is the last admin token; create another admin token before revoking it"));
        let new = NewToken { name: "second".into(), role: Role::Admin, expires_in: None };
        let (second, _) = store.create_token(&operator(), new, at(2)).await.unwrap();
        store.revoke_token(&operator(), &first, at(3)).await.unwrap();
        assert_err!(store.revoke_token(&operator(), &second.id, at(4)).await, StoreError::Conflict(_));
    }

    /// On an empty database exactly one admin token is created, once.
    async fn bootstrap_creates_one_admin_token_exactly_once(store: Store) {
        let secret = store.bootstrap_admin(None, at(0)).await.unwrap().expect("first start creates a token");
        assert!(secret.starts_with("drv_op_") && secret.len() > 40, "{secret}");
        assert_eq!(store.bootstrap_admin(None, at(1)).await.unwrap(), None);
        assert_eq!(store.bootstrap_admin(Some("another-preset-secret".into()), at(2)).await.unwrap(), None);

        let tokens = store.list_tokens().await.unwrap();
        assert_eq!(tokens.len(), 1);
        let token = &tokens[0];
        assert_eq!((token.name.as_str(), token.role, token.created_by.as_str()), ("bootstrap-admin", Role::Admin, "system"));
        assert_eq!((token.created_at, token.expires_at, token.revoked_at), (at(0), None, None));

        let auth = store.authenticate_token(&secret, at(3)).await.unwrap();
        assert_eq!((auth.id.as_str(), auth.name.as_str(), auth.role), (token.id.as_str(), "bootstrap-admin", Role::Admin));
        assert_eq!(auth.actor(), drover_store::Actor::token(&token.id, "bootstrap-admin"));
    }

    /// Replicas starting together on an empty database still create only one admin token.
    async fn concurrent_bootstraps_create_one_admin_token(store: Store) {
        let attempts = (0..4).map(|_| store.bootstrap_admin(None, at(0)));
        let created: Vec<String> = futures::future::join_all(attempts).await.into_iter().filter_map(Result::unwrap).collect();
        assert_eq!(created.len(), 1);
        assert_eq!(store.list_tokens().await.unwrap().len(), 1);
        assert_eq!(store.authenticate_token(&created[0], at(1)).await.unwrap().role, Role::Admin);
    }

    /// A preset secret (from configuration) becomes the admin token; a weak one is refused; any
    /// existing token means there is nothing to bootstrap.
    async fn bootstrap_uses_a_preset_secret(store: Store) {
        assert_err!(store.bootstrap_admin(Some("short".into()), at(0)).await, StoreError::Config(_));
        assert_eq!(store.list_tokens().await.unwrap().len(), 0);
        let preset = "preset-admin-secret-0123456789";
        assert_eq!(store.bootstrap_admin(Some(preset.into()), at(0)).await.unwrap().as_deref(), Some(preset));
        assert_eq!(store.authenticate_token(preset, at(1)).await.unwrap().role, Role::Admin);
        assert_eq!(store.bootstrap_admin(Some(preset.into()), at(2)).await.unwrap(), None);
        assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    }

    /// Dashboard sessions that ended before the cutoff are deleted; live ones and other tokens stay.
    async fn ended_dashboard_sessions_are_pruned(store: Store) {
        let session = |name: &str, expires: Option<&str>| NewToken {
            name: format!("{}{name}", drover_store::SESSION_NAME_PREFIX),
            role: Role::Operator,
            expires_in: expires.map(str::to_owned),
        };
        let (expired, _) = store.create_token(&operator(), session("ada", Some("1h")), at(0)).await.unwrap();
        let (revoked, _) = store.create_token(&operator(), session("bob", Some("12h")), at(0)).await.unwrap();
        store.revoke_token(&operator(), &revoked.id, at(5)).await.unwrap();
        store.create_token(&operator(), session("cy", Some("12h")), at(0)).await.unwrap();
        let ordinary = NewToken { name: "ci".into(), role: Role::Operator, expires_in: Some("1h".into()) };
        store.create_token(&operator(), ordinary, at(0)).await.unwrap();

        assert_eq!(store.prune_sessions(at(4)).await.unwrap(), 0, "nothing ended before minute 4");
        assert_eq!(store.prune_sessions(at(100)).await.unwrap(), 2);
        let mut left: Vec<String> = store.list_tokens().await.unwrap().into_iter().map(|t| t.name).collect();
        left.sort();
        assert_eq!(left, vec!["ci".to_owned(), "web session of cy".to_owned()]);
        assert!(!left.iter().any(|n| n.ends_with("ada") || n.ends_with("bob")), "{expired:?}");
    }

    /// Tokens authenticate until they expire or are revoked.
    async fn tokens_are_created_listed_revoked_and_expire(store: Store) {
        let new = NewToken { name: "ci".into(), role: Role::Operator, expires_in: Some("1h".into()) };
        let (ci, ci_secret) = store.create_token(&operator(), new, at(0)).await.unwrap();
        assert!(ci_secret.starts_with("drv_op_"));
        assert_eq!((ci.name.as_str(), ci.role, ci.created_by.as_str()), ("ci", Role::Operator, "token:tok_operator"));
        assert_eq!((ci.created_at, ci.expires_at, ci.revoked_at, ci.last_used_at), (at(0), Some(at(60)), None, None));
        let new = NewToken { name: "dashboard".into(), role: Role::Viewer, expires_in: None };
        let (dashboard, dashboard_secret) = store.create_token(&operator(), new, at(1)).await.unwrap();
        // The bootstrap only ever runs on an empty token table.
        assert_eq!(store.bootstrap_admin(None, at(1)).await.unwrap(), None);

        let auth = store.authenticate_token(&ci_secret, at(59)).await.unwrap();
        assert_eq!((auth.id.as_str(), auth.name.as_str(), auth.role, auth.last_used_at), (ci.id.as_str(), "ci", Role::Operator, None));
        store.touch_token(&ci.id, at(59)).await.unwrap();
        assert_eq!(store.authenticate_token(&ci_secret, at(59)).await.unwrap().last_used_at, Some(at(59)));
        assert_err!(
            store.authenticate_token(&ci_secret, at(60)).await,
            StoreError::Unauthorized(m) if m == format!("API token {} has expired", ci.id)
        );

        let listed: Vec<(String, Option<drover_core::Timestamp>)> =
            store.list_tokens().await.unwrap().into_iter().map(|t| (t.name, t.last_used_at)).collect();
        assert_eq!(listed, vec![("ci".to_owned(), Some(at(59))), ("dashboard".to_owned(), None)]);

        assert_eq!(store.authenticate_token(&dashboard_secret, at(10_000)).await.unwrap().role, Role::Viewer);
        let revoked = store.revoke_token(&operator(), &dashboard.id, at(2)).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(at(2)));
        assert_err!(
            store.authenticate_token(&dashboard_secret, at(3)).await,
            StoreError::Unauthorized(m) if m == format!("API token {} has been revoked", dashboard.id)
        );
        assert_err!(store.revoke_token(&operator(), &dashboard.id, at(4)).await, StoreError::Conflict(_));
        assert_err!(store.revoke_token(&operator(), "tok_missing", at(4)).await, StoreError::NotFound { kind: "token", .. });
        assert_err!(
            store.authenticate_token("drv_op_never-issued", at(0)).await,
            StoreError::Unauthorized(m) if m == "unknown API token"
        );

        for (name, lifetime) in [("", None), ("bad\nname", None), ("ok", Some("0m")), ("ok", Some("soon"))] {
            let new = NewToken { name: name.into(), role: Role::Viewer, expires_in: lifetime.map(str::to_owned) };
            assert_err!(store.create_token(&operator(), new, at(5)).await, StoreError::Invalid(_));
        }
        assert_eq!(store.list_tokens().await.unwrap().len(), 2);
    }
}
