//! Signing keys: their files, their JWK form and kid, and the in-memory key ring.
//!
//! Key state (created, signs-from, retired) lives in the database; the private
//! keys live as PKCS#8 PEM files named `<kid>.pem` in the keys directory. Every
//! instance reloads the state every second, so `keys rotate` and `keys retire`
//! reach running servers without a restart.

mod file;
mod ring;

pub use file::{KeyFileError, SigningKey, read_key_dir, write_key_file};
pub use ring::{
    KeyEntry, KeyRing, KeySet, KeyState, RELOAD_SLACK, bootstrap, generate_and_store, key_state, key_states,
};
