//! What a workload's justification may be: the one check the agent and central both apply.

use policy::{check_justification, JustificationError, MAX_JUSTIFICATION};

#[test]
fn each_justification_is_taken_or_refused_with_its_reason() {
    let long = "x".repeat(MAX_JUSTIFICATION + 1);
    let full = "é".repeat(MAX_JUSTIFICATION / 2);
    let cases: &[(&str, Result<(), JustificationError>)] = &[
        ("nightly export of orders", Ok(())),
        ("two lines\nand\ta tab", Ok(())),
        (&full, Ok(())),
        ("", Err(JustificationError::Empty)),
        (" \n\t", Err(JustificationError::Empty)),
        (
            &long,
            Err(JustificationError::TooLong(MAX_JUSTIFICATION + 1)),
        ),
        (
            "ok\u{1b}[2J",
            Err(JustificationError::Control { at: 2, c: '\u{1b}' }),
        ),
        ("cr\r", Err(JustificationError::Control { at: 2, c: '\r' })),
        (
            "é\u{85}",
            Err(JustificationError::Control { at: 2, c: '\u{85}' }),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&check_justification(text), want, "{text:?}");
    }
    assert_eq!(
        JustificationError::Control { at: 2, c: '\u{1b}' }.to_string(),
        "has a control character (\\u{1b}) at byte 2"
    );
}
