//! PostgreSQL: the pool every handler borrows from, and how its errors are told apart. The
//! schema is the stack's migrations ledger (`sql/migrations`); this crate never creates tables.

use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use crate::error::ApiError;

/// A pool of up to 16 connections to `url`, connected once before serving.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// Did the statement fail on a unique constraint (SQLSTATE 23505)?
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Did PostgreSQL refuse a value it cannot store (SQLSTATE class 22: a NUL in text or JSON,
/// a number out of range)? Such values come from the caller: a 400, not a 500.
pub fn is_data_exception(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")))
}

/// Did the statement fail on a foreign key (SQLSTATE 23503)?
pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}

/// A timestamp column as RFC 3339 in UTC with milliseconds, for `SELECT` lists.
pub fn rfc3339(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

/// A row whose first column is a JSON object (`json_build_object(...)::text`), as `T`: the
/// queries name each field once, in the shape the API answers with.
pub fn json_row<T: DeserializeOwned>(row: &PgRow) -> Result<T, ApiError> {
    let text: String = row.try_get(0)?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("a stored row does not read back: {e}")))
}
