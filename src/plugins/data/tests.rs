use super::*;

/// The disk bytes for a data string with variables.
fn eval_vars(data: &str, vars: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut p = DataPlugin::new();
    p.config("data", data)?;
    for (k, v) in vars {
        p.config(k, v)?;
    }
    p.config_complete()?;
    let (img, size) = p.image()?;
    let mut v = vec![0u8; size as usize];
    for (k, s) in img.segments() {
        let k = k as usize;
        match s {
            Seg::Data(d) => v[k..k + d.len()].copy_from_slice(d),
            Seg::Fill(b, n) => v[k..k + *n as usize].fill(*b),
        }
    }
    Ok(v)
}

fn eval(data: &str) -> Vec<u8> {
    eval_vars(data, &[]).unwrap_or_else(|e| panic!("{data}: {e}"))
}

fn err(data: &str) -> String {
    eval_vars(data, &[]).unwrap_err().message().to_string()
}

#[test]
fn bytes_offsets_and_alignment() {
    let mut want = vec![0u8; 512];
    want[..4].copy_from_slice(&[0, 1, 2, 3]);
    want[510] = 0x55;
    want[511] = 0xaa;
    assert_eq!(eval("0 1 2 3 @0x1fe 0x55 0xaa"), want);
    assert_eq!(eval("0 1 2 3 @^0x200 @-2 le16:0xaa55"), want);
    assert_eq!(eval("010 0x10 10"), [8, 16, 10]);
    assert_eq!(eval("@100").len(), 100);
    assert_eq!(eval("1 2 3 @0 4"), [4, 2, 3]);
    assert_eq!(eval("@+2 1 @-1 2"), [0, 0, 2]);
    assert_eq!(eval("@1k 1").len(), 1025);
    assert_eq!(eval("1 @^4").len(), 4);
}

#[test]
fn repeats_groups_slices() {
    assert_eq!(
        eval("( 0x55 0xAA )*3"),
        [0x55, 0xaa, 0x55, 0xaa, 0x55, 0xaa]
    );
    assert_eq!(eval("0xff*4"), [0xff; 4]);
    assert_eq!(eval("( 1 2 ) * 2"), [1, 2, 1, 2]);
    assert_eq!(eval("1*0"), [] as [u8; 0]);
    assert_eq!(eval("( 1 2 3 4 5 )[1:3]"), [2, 3]);
    assert_eq!(eval("\"hello\"[1:]"), b"ello");
    assert_eq!(eval("\"hello\"[:2]"), b"he");
    assert_eq!(eval("\"hello\"[:]"), b"hello");
    assert_eq!(eval("( 1 2 )*2[1:]"), [2, 1, 2]);
    // Offsets inside a group are relative to it, and a group replaces
    // everything it covers, zeroes included.
    assert_eq!(eval("1 1 1 1 @0 ( @3 2 )"), [0, 0, 0, 2]);
    assert_eq!(eval("1 1 1 1 @0 ( 2 @+2 )"), [2, 0, 0, 1]);
    assert_eq!(eval("( 1 2 3 @0 )*2"), [1, 2, 3, 1, 2, 3]);
    assert_eq!(eval("( \"Hello\" )*2"), b"HelloHello");
}

#[test]
fn strings_words_comments() {
    assert_eq!(
        eval(r#""\x41\n\t\\\"\a\101\0""#),
        [0x41, 10, 9, b'\\', b'"', 7, 0x41, 0]
    );
    assert_eq!(
        eval("le16:0x1234 be16:0x1234 le32:1 be64:0x0102030405060708"),
        [0x34, 0x12, 0x12, 0x34, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(eval("be32:0x1"), [0, 0, 0, 1]);
    assert_eq!(eval("( le16:1 )"), [1, 0]);
    assert_eq!(eval("# comment\n1 2 # more\n3"), [1, 2, 3]);
}

#[test]
fn names_and_variables() {
    assert_eq!(eval(r"1 -> \a \a \a"), [1, 1]);
    assert_eq!(eval(r"1 -> \a ( 2 -> \a \a ) \a"), [2, 1]);
    let mut sector = vec![0u8; 512];
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let two: Vec<u8> = [sector.clone(), sector].concat();
    assert_eq!(
        eval(
            r" ( 0x55 0xAA ) -> \boot-signature ( @0x1fe \boot-signature ) -> \sector \sector \sector "
        ),
        two
    );
    assert_eq!(
        eval_vars("$pattern*2", &[("pattern", "0x55 0xAA")]).unwrap(),
        [0x55, 0xaa, 0x55, 0xaa]
    );
    assert_eq!(
        eval_vars("$a", &[("a", "$b 1"), ("b", "2")]).unwrap(),
        [2, 1]
    );
    assert!(err(r"( 1 -> \a ) \a").contains("\\a is not defined"));
    let e = eval_vars("$a", &[("a", "$a")]).unwrap_err();
    assert!(e.message().contains("refers to itself"), "{e}");
    let e = eval_vars("$v", &[("v", "1 zz")]).unwrap_err();
    assert!(e.message().contains("offset 2 of $v"), "{e}");
    let e = eval_vars("1", &[("unused", "2")]).unwrap_err();
    assert!(e.message().contains("'unused'"), "{e}");
}

#[test]
fn errors_point_at_the_token() {
    let e = err("1 2 256");
    assert!(e.contains("offset 4") && e.contains("256"), "{e}");
    assert!(err("08").contains("octal"));
    assert!(err("@-1").contains("@-1"));
    assert!(err("@^3").contains("power of 2"));
    assert!(err("@0 * 2").contains("offset"));
    assert!(err("*2").contains("must follow"));
    assert!(err("( 1 2").contains("unmatched '('"));
    assert!(err("1 2 )").contains("unmatched ')'"));
    assert!(err("\"abc").contains("unterminated"));
    assert!(err("1 x").contains("offset 2"));
    assert!(err("lx:1").contains("le16"));
    assert!(err("le16:0x12345").contains("range"));
    assert!(err("( 1 2 )[3:]").contains("slice"));
    assert!(err("1[2:1]").contains("start is after end"));
    assert!(err("\"\\xg0\"").contains("hexadecimal"));
    assert!(err("<").contains("file name"));
    assert!(err("<(echo").contains("closing"));
    assert!(err("@").contains("@"));
    assert!(err("\\").contains("NAME"));
    assert!(err(&"(".repeat(1000)).contains("nested too deeply"));
    assert!(err("@9223372036854775807 1").contains("2^63-1"));
    assert!(err("\"ab\"*4000000000000000").contains("cannot allocate"));
}

#[test]
fn files_and_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"abcdef").unwrap();
    let f = f.to_str().unwrap();
    assert_eq!(eval(&format!("<{f} 1")), b"abcdef\x01");
    assert_eq!(eval(&format!("<{f}[2:4]")), b"cd");
    assert_eq!(eval(&format!("<{f}*2")), b"abcdefabcdef");
    assert_eq!(eval("</dev/zero[:3] 1"), [0, 0, 0, 1]);
    assert_eq!(eval("<(printf '(a)')"), b"(a)");
    assert_eq!(eval("<(yes)[:5]"), b"y\ny\ny");
    assert_eq!(eval("<(yes)[2:5]"), b"y\ny");
    assert!(err("</nonexistent/x").contains("nonexistent"));
    assert!(err("<(exit 3)").contains("status 3"));
    assert!(err("</").contains("directory"));
}

#[test]
fn raw_base64_and_parameters() {
    assert_eq!(decode_base64("MTIz").unwrap(), b"123");
    assert_eq!(
        decode_base64("aGVsbG8gbmJka2l0IHVzZXI=").unwrap(),
        b"hello nbdkit user"
    );
    assert_eq!(decode_base64("YQ==").unwrap(), b"a");
    for bad in ["abc", "a$==", "YQ==YQ==", "Y==="] {
        assert!(decode_base64(bad).is_err(), "{bad}");
    }
    let mut p = DataPlugin::new();
    assert!(p.config_complete().is_err());
    p.config("raw", "x").unwrap();
    assert!(p.config("data", "1").is_err());
    assert!(p.config("size", "q").is_err());
    assert!(p.config("allocator", "nope").is_err());
    assert!(p.config("bad-key", "1").is_err());
    p.config("v", "1").unwrap();
    assert!(p.config_complete().is_err());
}
