//! The request one event makes to one hook: its body (rendered once per
//! event for the parts its hooks share), its headers and signatures.

mod body;
mod headers;
pub mod signing;

pub use self::body::{
    assemble_parts, fit_fields, hook_body, test_body, BodyParts, HookBody, HookPart, PartsLayout,
    SharedBody, SharedParts, PROPERTIES_KEY,
};
pub use self::headers::{headers, SigningKeys};
pub use self::signing::SigningKey;

#[cfg(test)]
mod tests;
