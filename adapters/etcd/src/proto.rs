//! etcd's protobuf messages, declared by hand for `prost` so that no `protoc` runs at build
//! time. Field numbers and types follow etcd's `.proto` files: `api/mvccpb/kv.proto`,
//! `server/lease/leasepb/lease.proto`, `api/authpb/auth.proto` and `AlarmMember` of
//! `api/etcdserverpb/rpc.proto`. Unknown fields are skipped, as protobuf requires, so values
//! written by a newer etcd still decode.

/// `mvccpb.KeyValue`: the value of every entry of the `key` bucket.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The revision of the key's last creation.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// The revision of the key's last modification.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// The number of modifications since creation; a deletion resets it to zero.
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// `leasepb.Lease`: the value of every entry of the `lease` bucket.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Lease {
    /// The lease id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The time to live granted, in seconds.
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The remaining time to live at the last checkpoint, 0 when never checkpointed.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// `authpb.UserAddOptions`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct UserAddOptions {
    /// The user has no password and authenticates by other means (TLS common name).
    #[prost(bool, tag = "1")]
    pub no_password: bool,
}

/// `authpb.User`: the value of every entry of the `authUsers` bucket.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct User {
    /// The user name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The bcrypt hash of the password.
    #[prost(bytes = "vec", tag = "2")]
    pub password: Vec<u8>,
    /// The roles granted.
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    /// The options the user was added with (etcd 3.4 on).
    #[prost(message, optional, tag = "4")]
    pub options: Option<UserAddOptions>,
}

/// `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PermissionType {
    /// Read.
    Read = 0,
    /// Write.
    Write = 1,
    /// Read and write.
    Readwrite = 2,
}

/// `authpb.Permission`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Permission {
    /// The permission type, a [`PermissionType`] value.
    #[prost(enumeration = "PermissionType", tag = "1")]
    pub perm_type: i32,
    /// The key, or the start of the range.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The end of the range (exclusive); empty for the single key, `[0]` for every key from
    /// `key` on.
    #[prost(bytes = "vec", tag = "3")]
    pub range_end: Vec<u8>,
}

/// `authpb.Role`: the value of every entry of the `authRoles` bucket.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Role {
    /// The role name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The key permissions granted.
    #[prost(message, repeated, tag = "2")]
    pub key_permission: Vec<Permission>,
}

/// `etcdserverpb.AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmType {
    /// No alarm (only used in queries).
    None = 0,
    /// The space quota is exhausted.
    Nospace = 1,
    /// Corruption was detected.
    Corrupt = 2,
}

/// `etcdserverpb.AlarmMember`: the *key* of every entry of the `alarm` bucket.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct AlarmMember {
    /// The member that raised the alarm.
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// The alarm, an [`AlarmType`] value.
    #[prost(enumeration = "AlarmType", tag = "2")]
    pub alarm: i32,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn key_value_matches_the_wire_format_of_mvccpb() {
        // protoc --encode=mvccpb.KeyValue: key "foo", create 2, mod 3, version 2, value "baz",
        // lease 0x2040a214b8d45c09.
        let wire = [
            0x0a, 0x03, b'f', b'o', b'o', 0x10, 0x02, 0x18, 0x03, 0x20, 0x02, 0x2a, 0x03, b'b', b'a', b'z', 0x30, 0x89,
            0xb8, 0xd1, 0xc6, 0xcb, 0xc2, 0xa8, 0xa0, 0x20,
        ];
        let kv = KeyValue::decode(&wire[..]).unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: b"baz".to_vec(),
                lease: 0x2040_a214_b8d4_5c09
            }
        );
        assert_eq!(kv.encode_to_vec(), wire);
    }

    #[test]
    fn role_and_user_use_etcds_field_numbers() {
        let role = Role {
            name: b"r".to_vec(),
            key_permission: vec![Permission {
                perm_type: PermissionType::Readwrite as i32,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            }],
        };
        assert_eq!(
            role.encode_to_vec(),
            [0x0a, 0x01, b'r', 0x12, 0x08, 0x08, 0x02, 0x12, 0x01, b'a', 0x1a, 0x01, b'b']
        );
        let user = User {
            name: b"u".to_vec(),
            password: b"p".to_vec(),
            roles: vec!["r".into()],
            options: Some(UserAddOptions { no_password: true }),
        };
        assert_eq!(
            user.encode_to_vec(),
            [0x0a, 0x01, b'u', 0x12, 0x01, b'p', 0x1a, 0x01, b'r', 0x22, 0x02, 0x08, 0x01]
        );
        let alarm = AlarmMember { member_id: 5, alarm: AlarmType::Corrupt as i32 };
        assert_eq!(alarm.encode_to_vec(), [0x08, 0x05, 0x10, 0x02]);
        let lease = Lease { id: 1, ttl: 2, remaining_ttl: 3 };
        assert_eq!(lease.encode_to_vec(), [0x08, 0x01, 0x10, 0x02, 0x18, 0x03]);
    }
}
