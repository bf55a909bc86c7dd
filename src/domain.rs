//! Value types that validate on construction: once built, they are known good.

mod email;
mod grant;
mod password;
mod redirect_uri;
mod role;
mod scope;

pub use email::{Email, normalise as normalise_username};
pub use grant::GrantType;
pub use password::{
    Password, PasswordError, normalise as normalise_password, preload as preload_common_passwords,
};
pub use redirect_uri::{RedirectUri, RedirectUriError};
pub use role::Role;
pub use scope::Scope;
