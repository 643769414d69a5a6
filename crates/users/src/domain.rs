//! Accounts' types and rules; no I/O. Every value past `parse` is valid.

use bookstore_platform::auth::Role;
use bookstore_platform::text_type;

pub use bookstore_platform::status::InvalidField;

/// 3 to 32 characters of lower-case letters, digits, `.`, `_` and `-`, starting with a letter
/// or digit. Stored lower-case; unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        let name = input.trim().to_lowercase();
        if !(3..=32).contains(&name.chars().count()) {
            return Err(InvalidField::new("username", "must be 3 to 32 characters"));
        }
        if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        {
            return Err(InvalidField::new("username", "may contain only letters, digits, '.', '_' and '-'"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(InvalidField::new("username", "must start with a letter or digit"));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address in the shape `local@domain.tld`, at most 254 characters, stored as given
/// (trimmed) and compared lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        let email = input.trim();
        let bad = || InvalidField::new("email", "must look like name@example.com");
        // 254 as sent, as the documented maxLength counts; and 254 bytes once trimmed (RFC 5321).
        if input.chars().count() > 254
            || email.len() > 254
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(bad());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(bad());
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form the blind index is computed over: one address, one index value.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

text_type!(
    /// A person's name as they want it written, 1 to 200 characters.
    FullName, "full_name", 1, 200
);
text_type!(
    /// A postal address; may be empty until the first order.
    Address, "address", 0, 500
);

/// A password that passed the policy. Never logged, never stored: only its argon2id hash is.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 128;

    /// NIST SP 800-63B's policy: length over complexity rules, and no password that is common,
    /// guessable, or made of the user's own name or email. zxcvbn judges the last two from its
    /// dictionaries of common passwords, names and words, and from `user_inputs`.
    pub fn parse(input: &str, user_inputs: &[&str]) -> Result<Self, InvalidField> {
        let len = input.chars().count();
        if len < Self::MIN_CHARS {
            return Err(InvalidField::new(
                "password",
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if len > Self::MAX_CHARS {
            return Err(InvalidField::new(
                "password",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        let estimate = zxcvbn::zxcvbn(input, user_inputs);
        if (estimate.score() as u8) < 3 {
            let hint = estimate
                .feedback()
                .and_then(|f| f.warning().map(|w| w.to_string()))
                .unwrap_or_else(|| "it is too easy to guess".to_owned());
            return Err(InvalidField::new(
                "password",
                format!("is too weak: {hint}; a few unrelated words make a strong one"),
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// A password as typed at login: not checked against the policy (it may predate it).
    pub fn unchecked(input: &str) -> Self {
        Self(input.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Roles as stored: a comma-separated list.
/// What a key in the keyring is for; the purpose is also bound into its wrapping, so a key
/// cannot be passed off as one of another purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Encrypts personal data (the data key).
    Data,
    /// Keys the blind index that finds a user by email.
    BlindIndex,
    /// Signs access tokens.
    Signing,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 3] = [KeyPurpose::Data, KeyPurpose::BlindIndex, KeyPurpose::Signing];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Data => "data",
            KeyPurpose::BlindIndex => "blind-index",
            KeyPurpose::Signing => "signing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

pub fn roles_to_text(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

pub fn roles_from_text(text: &str) -> Vec<Role> {
    text.split(',').filter_map(|r| Role::parse(r.trim())).collect()
}

/// Roles a person may hold (the `service` role belongs to service accounts only).
pub fn parse_person_roles(input: &[String]) -> Result<Vec<Role>, InvalidField> {
    let mut roles = Vec::new();
    for r in input {
        match Role::parse(r.trim()) {
            Some(Role::Service) | None => {
                return Err(InvalidField::new(
                    "roles",
                    format!("{r:?} is not one of customer, staff, admin"),
                ));
            }
            Some(role) if !roles.contains(&role) => roles.push(role),
            Some(_) => {}
        }
    }
    if roles.is_empty() {
        return Err(InvalidField::new("roles", "must name at least one role"));
    }
    Ok(roles)
}

/// A user as the service sees it, personal data decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames_are_lower_cased_and_restricted() {
        assert_eq!(Username::parse(" Ada.Lovelace ").unwrap().as_str(), "ada.lovelace");
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse("ada lovelace").is_err());
        assert!(Username::parse("_ada").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn emails_must_have_a_local_part_and_a_dotted_domain() {
        assert!(Email::parse("ada@example.com").is_ok());
        assert_eq!(Email::parse("Ada@Example.COM").unwrap().normalized(), "ada@example.com");
        for bad in
            ["ada", "ada@", "@example.com", "ada@example", "ada@ex ample.com", "ada@-x.com", "a@b@c.com"]
        {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let longest = format!("{}@{}.com", "a".repeat(64), [(); 3].map(|()| "b".repeat(61)).join("."));
        assert_eq!(longest.len(), 254);
        assert!(Email::parse(&longest).is_ok());
        assert!(Email::parse(&format!(" {longest} ")).is_err(), "padded past 254 as sent");
    }

    #[test]
    fn common_short_and_personal_passwords_are_refused() {
        assert!(Password::parse("password123", &[]).is_err(), "common");
        assert_eq!(Password::parse("short", &[]).unwrap_err().reason, "must be at least 10 characters");
        assert!(Password::parse("qwertyuiop", &[]).is_err(), "keyboard walk");
        assert!(Password::parse("adalovelace1815", &["adalovelace"]).is_err(), "built from the username");
        assert!(Password::parse("correct horse battery staple", &[]).is_ok(), "long passphrases pass");
        assert!(Password::parse(&"x".repeat(129), &[]).is_err());
    }

    #[test]
    fn person_roles_exclude_service() {
        assert_eq!(parse_person_roles(&["staff".into(), "staff".into()]).unwrap(), vec![Role::Staff]);
        assert!(parse_person_roles(&["service".into()]).is_err());
        assert!(parse_person_roles(&["root".into()]).is_err());
        assert!(parse_person_roles(&[]).is_err());
        assert_eq!(
            roles_from_text(&roles_to_text(&[Role::Admin, Role::Customer])),
            vec![Role::Admin, Role::Customer]
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in "\\PC{0,80}") {
            let _ = Username::parse(&input);
            let _ = Email::parse(&input);
            let _ = FullName::parse(&input);
        }
    }
}
