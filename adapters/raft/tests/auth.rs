//! Auth on a running cluster (etcd's simple tokens and permission checks): a token issued by one
//! member is taken by every member, and only while it is live; a wrong password, a user without
//! one and a bogus token are refused with etcd's errors; permissions are checked over whole
//! ranges; deleting a user or changing its password ends its tokens, disabling auth ends all.

use snapply_raft::RequestBuf;
use std::error::Error;
use std::time::Duration;

use snapply_core::store::PermissionType;
use snapply_raft::{AuthError, Cluster, Command, Need, RaftError, hash_password};

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(180);

fn read(key: &str, range_end: &str) -> Need {
    Need::Read { key: key.into(), range_end: range_end.into() }
}

fn write(key: &str, range_end: &str) -> Need {
    Need::Write { key: key.into(), range_end: range_end.into() }
}

fn refused<T>(result: std::result::Result<T, RaftError>) -> Option<AuthError> {
    match result {
        Err(RaftError::Auth(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_one_member_are_taken_by_all_while_live_and_checked_against_permissions() -> Result {
    tokio::time::timeout(BOUND, async {
        let dir = tempfile::tempdir()?;
        let cluster = Cluster::start(dir.path(), 3)?;
        let leader = cluster.leader(WAIT).await?;
        let ids = cluster.ids();
        let follower = *ids.iter().find(|id| **id != leader).ok_or("no follower")?;
        let (a, b) = (cluster.node(leader)?.client(), cluster.node(follower)?.client());

        // Disabled: everything passes, tokens are not looked at, none are issued.
        assert_eq!(a.authorize(Some("bogus".into()), vec![write("/k", "")]).await?, None);
        let not_enabled = a.authenticate("root", "pw").await.err();
        assert!(matches!(not_enabled, Some(RaftError::Auth(AuthError::NotEnabled))), "{not_enabled:?}");

        // The cost is bcrypt's least, to keep the test quick; etcd's default is 10.
        let hash = |p: &str| hash_password(p.into(), 4);
        let commands = [
            Command::Apply(RequestBuf::UserAdd {
                name: b"root".to_vec(),
                password_hash: hash("rootpw").await?,
                no_password: false,
            }),
            Command::Apply(RequestBuf::UserGrantRole { user: b"root".to_vec(), role: b"root".to_vec() }),
            Command::Apply(RequestBuf::UserAdd {
                name: b"alice".to_vec(),
                password_hash: hash("alicepw").await?,
                no_password: false,
            }),
            Command::Apply(RequestBuf::UserAdd { name: b"svc".to_vec(), password_hash: Vec::new(), no_password: true }),
            Command::Apply(RequestBuf::RoleAdd { name: b"r".to_vec() }),
            Command::Apply(RequestBuf::RoleGrantPermission {
                role: b"r".to_vec(),
                kind: PermissionType::Read,
                key: b"/a".to_vec(),
                range_end: b"/c".to_vec(),
            }),
            Command::Apply(RequestBuf::RoleGrantPermission {
                role: b"r".to_vec(),
                kind: PermissionType::ReadWrite,
                key: b"/c".to_vec(),
                range_end: b"/e".to_vec(),
            }),
            Command::Apply(RequestBuf::UserGrantRole { user: b"alice".to_vec(), role: b"r".to_vec() }),
            Command::Apply(RequestBuf::AuthSetEnabled(true)),
        ];
        for c in commands {
            b.propose(c).await?;
        }

        for (user, password) in [("alice", "wrong"), ("mallory", "pw"), ("svc", "")] {
            let e = b.authenticate(user, password).await.err();
            assert!(matches!(e, Some(RaftError::Auth(AuthError::AuthFailed))), "{user}: {e:?}");
        }
        let (_, alice) = b.authenticate("alice", "alicepw").await?;
        let (prefix, index) = alice.split_once('.').ok_or("a token is <prefix>.<index>")?;
        assert_eq!(prefix.len(), 16);
        assert!(index.parse::<u64>().is_ok(), "{alice}");

        // Issued through the follower, taken by the leader too (every member applied it).
        for client in [&a, &b] {
            let user = client.authorize(Some(alice.clone()), vec![read("/a", "/e"), write("/c", "/d")]).await?;
            assert_eq!(user.as_ref().map(|a| a.user()), Some(b"alice".as_slice()));
            let denied = client.authorize(Some(alice.clone()), vec![write("/a", "")]).await;
            assert_eq!(refused(denied), Some(AuthError::PermissionDenied));
            let beyond = client.authorize(Some(alice.clone()), vec![read("/a", "/f")]).await;
            assert_eq!(refused(beyond), Some(AuthError::PermissionDenied), "[/e, /f) is not covered");
            let admin = client.authorize(Some(alice.clone()), vec![Need::Admin]).await;
            assert_eq!(refused(admin), Some(AuthError::PermissionDenied));
            let bogus = client.authorize(Some("bogus.1".into()), Vec::new()).await;
            assert_eq!(refused(bogus), Some(AuthError::InvalidToken), "a bogus token, even for nothing");
            assert_eq!(refused(client.authorize(None, vec![read("/a", "")]).await), Some(AuthError::UserEmpty));
            assert_eq!(client.authorize(None, Vec::new()).await?, None, "no token, no need: as etcd");
        }

        // A changed password ends alice's tokens; root's stay.
        let (_, root) = a.authenticate("root", "rootpw").await?;
        b.propose(Command::Apply(RequestBuf::UserChangePassword {
            name: b"alice".to_vec(),
            password_hash: hash("new").await?,
        }))
        .await?;
        for client in [&a, &b] {
            // Caught up with the commit (a linearizable barrier): the change is applied here.
            client.read_index().await?;
            assert_eq!(refused(client.authorize(Some(alice.clone()), Vec::new()).await), Some(AuthError::InvalidToken));
            assert!(client.authorize(Some(root.clone()), vec![Need::Admin, write("/z", "\0")]).await.is_ok());
        }
        let (_, alice) = a.authenticate("alice", "new").await?;
        assert!(b.authorize(Some(alice.clone()), vec![read("/b", "")]).await.is_ok());

        // Checked again as it is applied (etcd's request header): a write checked before the
        // auth state changed is refused, whoever applies it, and changes nothing.
        let checked = b.authorize(Some(alice.clone()), vec![write("/c", "")]).await?;
        let put = |v: &str| Command::Apply(RequestBuf::Put { key: b"/c".to_vec(), value: v.into(), lease: 0 });
        b.with_auth(checked.clone()).propose(put("1")).await?;
        a.propose(Command::Apply(RequestBuf::RoleRevokePermission {
            role: b"r".to_vec(),
            key: b"/c".to_vec(),
            range_end: b"/e".to_vec(),
        }))
        .await?;
        let stale = b.with_auth(checked).propose(put("2")).await;
        assert!(matches!(stale, Err(RaftError::Auth(AuthError::OldRevision))), "{stale:?}");
        a.read_index().await?;
        assert_eq!(
            a.range(b"/c", b"").await?,
            vec![(b"/c".to_vec(), b"1".to_vec())],
            "the stale write changed nothing"
        );
        let now = b.authorize(Some(alice.clone()), vec![write("/c", "")]).await;
        assert_eq!(refused(now.map(|a| a.map(|a| a.user().to_vec()))), Some(AuthError::PermissionDenied));

        // Disabling auth ends every token: enabled again, root's old one is refused.
        a.propose(Command::Apply(RequestBuf::AuthSetEnabled(false))).await?;
        a.propose(Command::Apply(RequestBuf::AuthSetEnabled(true))).await?;
        b.read_index().await?;
        for token in [&root, &alice] {
            assert_eq!(refused(b.authorize(Some(token.clone()), Vec::new()).await), Some(AuthError::InvalidToken));
        }
        cluster.shutdown().await;
        Ok(())
    })
    .await?
}
