//! Any bytes from a PostgreSQL client: framing takes whole messages or
//! nothing, and no message parser panics.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use secondkey_pg::proto;

fuzz_target!(|data: &[u8]| {
    let mut startup = BytesMut::from(data);
    if let Ok(Some(body)) = proto::take_startup(&mut startup) {
        let _ = proto::startup_params(body.get(4..).unwrap_or_default());
    }
    let mut buf = BytesMut::from(data);
    let mut taken = 0;
    while let Ok(Some((ty, body))) = proto::take_message(&mut buf, 1 << 16) {
        taken += 5 + body.len();
        let _ = match ty {
            b'Q' => proto::query_text(&body).map(|_| ()),
            b'P' => proto::parse_parse(&body).map(|_| ()),
            b'B' => proto::parse_bind(&body).map(|b| {
                for i in 0..b.values.len() + 1 {
                    let _ = b.is_binary(i);
                }
            }),
            b'E' => proto::parse_execute(&body).map(|_| ()),
            b'D' | b'C' => proto::parse_target(&body, "Describe").map(|_| ()),
            _ => Ok(()),
        };
        let _ = proto::error_fields(&body);
    }
    assert_eq!(taken + buf.len(), data.len());
});
