//! The wire codec and the fast-mode negotiation payloads: decoding arbitrary
//! bytes never panics, and whatever decodes re-encodes to a value that
//! decodes the same.
#![no_main]

use anon_proto::wire::ext::{AckInfo, Answer, Offer};
use anon_proto::wire::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = Header::decode(data) {
        let mut out = Vec::new();
        header.encode(payload, &mut out);
        let (again, p) = Header::decode(&out).expect("re-encoded header decodes");
        assert_eq!(again, header);
        assert_eq!(p, payload);
    }
    if let Some(offer) = Offer::decode(data) {
        let mut out = Vec::new();
        offer.encode(&mut out);
        assert_eq!(Offer::decode(&out), Some(offer));
    }
    if let Some(answer) = Answer::decode(data) {
        let mut out = Vec::new();
        answer.encode(&mut out);
        assert_eq!(Answer::decode(&out).as_ref(), Some(&answer));
    }
    if let Some(info) = AckInfo::decode(data) {
        let mut out = Vec::new();
        info.encode(&mut out);
        assert_eq!(AckInfo::decode(&out).as_ref(), Some(&info));
    }
});
