//! Bodies decoded strictly, in both encodings.
//!
//! `rmp_serde` also accepts MessagePack's compact forms: a struct as a positional array, a
//! field name or an enum variant as its index (`"substrate": 1` is `cloud`), and binary values
//! where strings are expected. serde's derive takes a struct as a positional array from JSON
//! too (`{"samples": [["id", 1700000000000, "cpu_load_pct", 5]]}`); the differential fuzz target
//! found JSON and MessagePack refusing such a batch at different fields. The contract (http-api.md) is
//! maps with field names and variants by name, as `rmp_serde::to_vec_named` writes them; the
//! compact forms depend on declaration order and shift when an optional field is skipped, so a
//! client that sends one would have its values land in the wrong fields. [`Strict`] wraps a
//! deserializer and refuses them: names (map keys, field and variant identifiers) must be
//! strings, structs must be maps, and there are no binary values. It only forwards otherwise,
//! so decoding costs what it did.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

/// What the value being decoded may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Anything the inner visitor takes, except binary values.
    Any,
    /// A name (a map key, a field or variant identifier): a string only.
    Name,
    /// A struct: a map only, never a positional array.
    Struct,
}

/// A deserializer that refuses the compact forms (see the module documentation).
#[derive(Debug)]
pub struct Strict<D> {
    de: D,
    expect: Expect,
}

impl<D> Strict<D> {
    pub fn new(de: D) -> Strict<D> {
        Strict {
            de,
            expect: Expect::Any,
        }
    }

    fn visitor<V>(&self, inner: V, wanted: Expect) -> Wrap<V> {
        // Inside a name, everything is a name.
        let expect = if self.expect == Expect::Name {
            Expect::Name
        } else {
            wanted
        };
        Wrap { inner, expect }
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.visitor(visitor, Expect::Any);
                self.de.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward! {
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_ignored_any(),
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Expect::Struct);
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Expect::Name);
        self.de.deserialize_identifier(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor that refuses what its [`Expect`] excludes and keeps nested values strict.
struct Wrap<V> {
    inner: V,
    expect: Expect,
}

impl<V> Wrap<V> {
    fn name_only<'de, E: de::Error>(&self, unexpected: Unexpected<'_>) -> Result<(), E>
    where
        V: Visitor<'de>,
    {
        if self.expect == Expect::Name {
            Err(E::invalid_type(unexpected, self))
        } else {
            Ok(())
        }
    }
}

macro_rules! scalar {
    ($($method:ident($ty:ty) => $unexpected:expr),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.name_only($unexpected(v))?;
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    scalar! {
        visit_bool(bool) => Unexpected::Bool,
        visit_i8(i8) => |v| Unexpected::Signed(i64::from(v)),
        visit_i16(i16) => |v| Unexpected::Signed(i64::from(v)),
        visit_i32(i32) => |v| Unexpected::Signed(i64::from(v)),
        visit_i64(i64) => Unexpected::Signed,
        visit_u8(u8) => |v| Unexpected::Unsigned(u64::from(v)),
        visit_u16(u16) => |v| Unexpected::Unsigned(u64::from(v)),
        visit_u32(u32) => |v| Unexpected::Unsigned(u64::from(v)),
        visit_u64(u64) => Unexpected::Unsigned,
        visit_f32(f32) => |v| Unexpected::Float(f64::from(v)),
        visit_f64(f64) => Unexpected::Float,
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<V::Value, E> {
        self.name_only(Unexpected::Other("a 128-bit integer"))?;
        self.inner.visit_i128(v)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<V::Value, E> {
        self.name_only(Unexpected::Other("a 128-bit integer"))?;
        self.inner.visit_u128(v)
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<V::Value, E> {
        self.inner.visit_char(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        Err(E::invalid_type(Unexpected::Bytes(v), &self))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        Err(E::invalid_type(Unexpected::Bytes(v), &self))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        Err(E::invalid_type(Unexpected::Bytes(&v), &self))
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.name_only(Unexpected::Option)?;
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.name_only(Unexpected::Option)?;
        self.inner.visit_some(Strict::new(d))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.name_only(Unexpected::Unit)?;
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.name_only(Unexpected::NewtypeStruct)?;
        self.inner.visit_newtype_struct(Strict::new(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.expect != Expect::Any {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.inner.visit_seq(StrictSeq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.name_only(Unexpected::Map)?;
        self.inner.visit_map(StrictMap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.name_only(Unexpected::Enum)?;
        self.inner.visit_enum(StrictEnum(data))
    }
}

/// A seed whose value is decoded strictly, as `expect` says.
struct Seed<S> {
    inner: S,
    expect: Expect,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Strict {
            de,
            expect: self.expect,
        })
    }
}

struct StrictSeq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed {
            inner: seed,
            expect: Expect::Any,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed {
            inner: seed,
            expect: Expect::Name,
        })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed {
            inner: seed,
            expect: Expect::Any,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for StrictEnum<A> {
    type Error = A::Error;
    type Variant = StrictVariant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Seed {
            inner: seed,
            expect: Expect::Name,
        })?;
        Ok((value, StrictVariant(variant)))
    }
}

struct StrictVariant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for StrictVariant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed {
            inner: seed,
            expect: Expect::Any,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(
            len,
            Wrap {
                inner: visitor,
                expect: Expect::Any,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(
            fields,
            Wrap {
                inner: visitor,
                expect: Expect::Struct,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kora_model::{EventBatch, RunBatch, SampleBatch};
    use serde::de::DeserializeOwned;
    use serde_json::json;

    fn strict<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
        let bytes = rmp_serde::to_vec_named(value).unwrap();
        let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
        serde_path_to_error::deserialize(Strict::new(&mut de))
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    fn lenient<T: DeserializeOwned>(bytes: &[u8]) -> bool {
        rmp_serde::from_slice::<T>(bytes).is_ok()
    }

    #[test]
    fn named_maps_decode_as_before() {
        let samples = json!({"samples": [
            {"signal": "cpu_load_pct", "value": 37.5, "device": 0, "model_id": "m"},
            {"signal": "gpu_vram_free_mb", "unavailable": "no GPU"},
        ]});
        let batch: SampleBatch = strict(&samples).unwrap();
        assert_eq!(batch, serde_json::from_value(samples).unwrap());
        let events = json!({"events": [
            {"kind": "session_started", "session_id": "s1"},
            {"kind": "model_load", "model_id": "m", "model_required_vram_mb": 1.0,
             "outcome": "failed"},
        ]});
        let batch: EventBatch = strict(&events).unwrap();
        assert_eq!(batch, serde_json::from_value(events).unwrap());
        let runs = json!({"runs": [{
            "run_id": "r1", "session_id": "s1", "model_id": "m", "substrate": "local",
            "prompt_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "context_tokens": 2048, "model_latency_ms": 2100.0, "total_latency_ms": 2600.0,
            "deterministic_stage_ms": 400.0, "model_stage_ms": 2100.0,
            "validation_retry_count": 0, "budget_breach_count": 0,
            "stages": [{"name": "parse", "kind": "deterministic", "ms": 1.5}],
        }]});
        let batch: RunBatch = strict(&runs).unwrap();
        assert_eq!(batch, serde_json::from_value(runs).unwrap());
    }

    /// Each of these decodes with plain rmp_serde, and is refused by `Strict` naming the field.
    #[test]
    fn compact_forms_are_refused() {
        let run = |substrate: serde_json::Value| {
            json!({"runs": [{
                "run_id": "r1", "session_id": "s1", "model_id": "m", "substrate": substrate,
                "prompt_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "context_tokens": 1, "model_latency_ms": 1.0, "total_latency_ms": 1.0,
                "deterministic_stage_ms": 0.0, "model_stage_ms": 1.0,
                "validation_retry_count": 0, "budget_breach_count": 0,
            }]})
        };
        let cases: Vec<(&str, Vec<u8>, Result<(), String>)> = vec![
            (
                "a variant by index",
                rmp_serde::to_vec_named(&run(json!(1))).unwrap(),
                strict::<RunBatch>(&run(json!(1))).map(drop),
            ),
            (
                "a signal by index",
                rmp_serde::to_vec_named(&json!({"samples": [{"signal": 0, "value": 1.0}]}))
                    .unwrap(),
                strict::<SampleBatch>(&json!({"samples": [{"signal": 0, "value": 1.0}]})).map(drop),
            ),
            (
                "a tag by index",
                rmp_serde::to_vec_named(&json!({"events": [{"kind": 3, "session_id": "s"}]}))
                    .unwrap(),
                strict::<EventBatch>(&json!({"events": [{"kind": 3, "session_id": "s"}]}))
                    .map(drop),
            ),
            (
                "a struct as a positional array",
                rmp_serde::to_vec_named(&json!({"samples": [[null, null, "cpu_cores", 1.0]]}))
                    .unwrap(),
                strict::<SampleBatch>(&json!({"samples": [[null, null, "cpu_cores", 1.0]]}))
                    .map(drop),
            ),
        ];
        for (what, bytes, result) in cases {
            let lenient_ok = match what {
                "a variant by index" => lenient::<RunBatch>(&bytes),
                "a tag by index" => lenient::<EventBatch>(&bytes),
                _ => lenient::<SampleBatch>(&bytes),
            };
            assert!(lenient_ok, "{what}: plain rmp_serde refuses it already");
            let error = result.unwrap_err();
            assert!(error.contains("invalid type"), "{what}: {error}");
        }
        // A field name by index: {"samples": [{2: "cpu_cores", 3: 1.0}]}.
        let mut body = vec![0x81, 0xa7];
        body.extend_from_slice(b"samples");
        body.extend([0x91, 0x82, 0x02, 0xa9]);
        body.extend_from_slice(b"cpu_cores");
        body.extend([0x03, 0xcb]);
        body.extend(1.0f64.to_be_bytes());
        assert!(lenient::<SampleBatch>(&body));
        let mut de = rmp_serde::Deserializer::from_read_ref(&body[..]);
        let e =
            serde_path_to_error::deserialize::<_, SampleBatch>(Strict::new(&mut de)).unwrap_err();
        assert_eq!(e.path().to_string(), "samples[0].?", "{e}");
        // A binary value as a string: {"samples": [{"signal": "cpu_cores", "model_id": bin}]}.
        let mut body = vec![0x81, 0xa7];
        body.extend_from_slice(b"samples");
        body.extend([0x91, 0x82, 0xa6]);
        body.extend_from_slice(b"signal");
        body.push(0xa9);
        body.extend_from_slice(b"cpu_cores");
        body.push(0xa8);
        body.extend_from_slice(b"model_id");
        body.extend([0xc4, 0x01, b'm']);
        assert!(lenient::<SampleBatch>(&body));
        let mut de = rmp_serde::Deserializer::from_read_ref(&body[..]);
        let e =
            serde_path_to_error::deserialize::<_, SampleBatch>(Strict::new(&mut de)).unwrap_err();
        assert_eq!(e.path().to_string(), "samples[0].model_id", "{e}");
    }
}
