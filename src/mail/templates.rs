//! The messages gatehouse sends, each with a text and an HTML part.

use super::Letter;

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(title: &str, paragraphs: &[String], link: Option<(&str, &str)>) -> String {
    let mut body = String::new();
    for p in paragraphs {
        body.push_str(&format!("<p>{}</p>\n", escape_html(p)));
    }
    if let Some((label, href)) = link {
        let href = escape_html(href);
        body.push_str(&format!(
            "<p><a href=\"{href}\">{}</a></p>\n<p>Or paste this address into your browser: {href}</p>\n",
            escape_html(label)
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}</body></html>\n",
        escape_html(title)
    )
}

/// "Confirm your e-mail address", with the verification link.
pub fn verify_email(link: &str) -> Letter {
    let subject = "Confirm your e-mail address".to_owned();
    let lines = [
        "Someone, hopefully you, created an account with this e-mail address.".to_owned(),
        "Open the link below within 24 hours to confirm it. If it was not you, ignore this message."
            .to_owned(),
    ];
    Letter {
        text: format!("{}\n\n{}\n\n{link}\n", lines[0], lines[1]),
        html: html(&subject, &lines, Some(("Confirm my e-mail address", link))),
        subject,
    }
}

/// The notice sent instead when someone registers an address that has an account.
pub fn already_registered(reset_link_base: &str) -> Letter {
    let subject = "You already have an account".to_owned();
    let lines = [
        "Someone, hopefully you, tried to create an account with this e-mail address, but it already has one."
            .to_owned(),
        "If you forgot your password, you can ask for a reset link at the address below. If it was not you, ignore this message.".to_owned(),
    ];
    Letter {
        text: format!("{}\n\n{}\n\n{reset_link_base}\n", lines[0], lines[1]),
        html: html(&subject, &lines, Some(("Reset my password", reset_link_base))),
        subject,
    }
}

/// "Reset your password", with the reset link.
pub fn password_reset(link: &str) -> Letter {
    let subject = "Reset your password".to_owned();
    let lines = [
        "Someone, hopefully you, asked to reset the password of the account with this e-mail address.".to_owned(),
        "Open the link below within one hour to choose a new password. If it was not you, ignore this message: your password stays as it is.".to_owned(),
    ];
    Letter {
        text: format!("{}\n\n{}\n\n{link}\n", lines[0], lines[1]),
        html: html(&subject, &lines, Some(("Choose a new password", link))),
        subject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_appear_in_both_parts_and_html_is_escaped() {
        let letter = verify_email("http://x/verify-email?token=ghv_a&b");
        assert!(letter.text.contains("http://x/verify-email?token=ghv_a&b"));
        assert!(
            letter
                .html
                .contains("href=\"http://x/verify-email?token=ghv_a&amp;b\"")
        );
        assert_eq!(escape_html("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
