//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/`, and cargo alone notices only edits to files it has seen.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
