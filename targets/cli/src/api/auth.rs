//! etcd's Auth service: enable and disable, Authenticate (simple tokens), users and roles with
//! key permissions. Changes go through raft as entries every member applies; reads are served
//! after a linearizable read barrier from the member's applied state (etcd serves them through
//! raft too). Who may do what is etcd's: every change but AuthEnable, and the lists, need the
//! root role; a user may get itself, and a role it holds (etcd's `authApplierV3`).

use snapply_core::store::PermissionType;
use snapply_raft::RequestBuf;
use snapply_raft::{Command, Need, PermissionInfo, hash_password};
use tonic::{Request, Response, Status};

use super::pb::{
    PbAuthDisableRequest, PbAuthDisableResponse, PbAuthEnableRequest, PbAuthEnableResponse, PbAuthRoleAddRequest,
    PbAuthRoleAddResponse, PbAuthRoleDeleteRequest, PbAuthRoleDeleteResponse, PbAuthRoleGetRequest,
    PbAuthRoleGetResponse, PbAuthRoleGrantPermissionRequest, PbAuthRoleGrantPermissionResponse, PbAuthRoleListRequest,
    PbAuthRoleListResponse, PbAuthRoleRevokePermissionRequest, PbAuthRoleRevokePermissionResponse, PbAuthService,
    PbAuthStatusRequest, PbAuthStatusResponse, PbAuthUserAddRequest, PbAuthUserAddResponse,
    PbAuthUserChangePasswordRequest, PbAuthUserChangePasswordResponse, PbAuthUserDeleteRequest,
    PbAuthUserDeleteResponse, PbAuthUserGetRequest, PbAuthUserGetResponse, PbAuthUserGrantRoleRequest,
    PbAuthUserGrantRoleResponse, PbAuthUserListRequest, PbAuthUserListResponse, PbAuthUserRevokeRoleRequest,
    PbAuthUserRevokeRoleResponse, PbAuthenticateRequest, PbAuthenticateResponse, PbPermission, PbPermissionType,
    PbResponseHeader,
};
use super::{Member, error};

/// The Auth service of a member; `bcrypt_cost` is etcd's `--bcrypt-cost`.
pub(super) struct AuthService {
    pub(super) member: Member,
    pub(super) bcrypt_cost: u32,
}

fn to_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn permission_type(kind: PermissionType) -> PbPermissionType {
    match kind {
        PermissionType::Read => PbPermissionType::Read,
        PermissionType::Write => PbPermissionType::Write,
        PermissionType::ReadWrite => PbPermissionType::Readwrite,
    }
}

fn to_pb_permission(p: PermissionInfo) -> PbPermission {
    PbPermission { perm_type: permission_type(p.kind).into(), key: p.key, range_end: p.range_end }
}

impl AuthService {
    /// Checks `request`'s token for `needs`, then proposes `command`; returns the header.
    async fn change<T>(
        &self,
        request: &Request<T>,
        needs: Vec<Need>,
        command: Command,
    ) -> Result<Option<PbResponseHeader>, Status> {
        let propose = |client: snapply_raft::Client| {
            let command = command.clone();
            async move { client.propose_with_header(command).await }
        };
        let header = self.member.authorized(request, needs, propose).await?;
        Ok(self.member.header(header))
    }

    async fn propose(&self, command: Command) -> Result<Option<PbResponseHeader>, Status> {
        let header = self.member.client.propose_with_header(command).await.map_err(|e| error::status(&e))?;
        Ok(self.member.header(header))
    }

    /// Checks `request`'s token for `needs`, then waits for a linearizable read barrier.
    async fn read<T>(&self, request: &Request<T>, needs: Vec<Need>) -> Result<(), Status> {
        self.member.authorize(request, needs).await?;
        self.member.read_barrier(false).await
    }

    async fn hash(&self, password: String) -> Result<Vec<u8>, Status> {
        hash_password(password, self.bcrypt_cost).await.map_err(|e| error::status(&e))
    }
}

#[tonic::async_trait]
impl PbAuthService for AuthService {
    async fn auth_enable(
        &self,
        request: Request<PbAuthEnableRequest>,
    ) -> Result<Response<PbAuthEnableResponse>, Status> {
        // Enabling needs a root user with the root role, which the store checks as it applies.
        let header = self.change(&request, Vec::new(), Command::Apply(RequestBuf::AuthSetEnabled(true))).await?;
        Ok(Response::new(PbAuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<PbAuthDisableRequest>,
    ) -> Result<Response<PbAuthDisableResponse>, Status> {
        let header =
            self.change(&request, vec![Need::Admin], Command::Apply(RequestBuf::AuthSetEnabled(false))).await?;
        Ok(Response::new(PbAuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<PbAuthStatusRequest>,
    ) -> Result<Response<PbAuthStatusResponse>, Status> {
        self.read(&request, Vec::new()).await?;
        let (header, enabled, auth_revision) = self.member.client.auth_status().await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbAuthStatusResponse { header: self.member.header(header), enabled, auth_revision }))
    }

    async fn authenticate(
        &self,
        request: Request<PbAuthenticateRequest>,
    ) -> Result<Response<PbAuthenticateResponse>, Status> {
        let r = request.into_inner();
        let (header, token) =
            self.member.client.authenticate(&r.name, &r.password).await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbAuthenticateResponse { header: self.member.header(header), token }))
    }

    async fn user_add(
        &self,
        request: Request<PbAuthUserAddRequest>,
    ) -> Result<Response<PbAuthUserAddResponse>, Status> {
        self.member.authorize(&request, vec![Need::Admin]).await?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(error::user_empty());
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        // A user without a password keeps an empty hash: it cannot authenticate (etcd's
        // `NoPassword`). etcd 3.5's clients may send the hash already made (`hashedPassword`).
        let password_hash = match (no_password, r.hashed_password.is_empty()) {
            (true, _) => Vec::new(),
            (false, false) => r.hashed_password.into_bytes(),
            (false, true) => self.hash(r.password).await?,
        };
        let header = self
            .propose(Command::Apply(RequestBuf::UserAdd { name: r.name.into_bytes(), password_hash, no_password }))
            .await?;
        Ok(Response::new(PbAuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<PbAuthUserGetRequest>,
    ) -> Result<Response<PbAuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone().into_bytes();
        self.read(&request, vec![Need::AdminOrUser(name.clone())]).await?;
        let (header, users) = self.member.client.users().await.map_err(|e| error::status(&e))?;
        let user = users.into_iter().find(|u| u.name == name).ok_or_else(error::user_not_found)?;
        Ok(Response::new(PbAuthUserGetResponse {
            header: self.member.header(header),
            roles: user.roles.into_iter().map(to_string).collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<PbAuthUserListRequest>,
    ) -> Result<Response<PbAuthUserListResponse>, Status> {
        self.read(&request, vec![Need::Admin]).await?;
        let (header, users) = self.member.client.users().await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbAuthUserListResponse {
            header: self.member.header(header),
            users: users.into_iter().map(|u| to_string(u.name)).collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<PbAuthUserDeleteRequest>,
    ) -> Result<Response<PbAuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone().into_bytes();
        let header = self.change(&request, vec![Need::Admin], Command::Apply(RequestBuf::UserDelete { name })).await?;
        Ok(Response::new(PbAuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<PbAuthUserChangePasswordRequest>,
    ) -> Result<Response<PbAuthUserChangePasswordResponse>, Status> {
        self.member.authorize(&request, vec![Need::Admin]).await?;
        let r = request.into_inner();
        let password_hash =
            if r.hashed_password.is_empty() { self.hash(r.password).await? } else { r.hashed_password.into_bytes() };
        let command = Command::Apply(RequestBuf::UserChangePassword { name: r.name.into_bytes(), password_hash });
        let header = self.propose(command).await?;
        Ok(Response::new(PbAuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<PbAuthUserGrantRoleRequest>,
    ) -> Result<Response<PbAuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref();
        let command = Command::Apply(RequestBuf::UserGrantRole {
            user: r.user.clone().into_bytes(),
            role: r.role.clone().into_bytes(),
        });
        let header = self.change(&request, vec![Need::Admin], command).await?;
        Ok(Response::new(PbAuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<PbAuthUserRevokeRoleRequest>,
    ) -> Result<Response<PbAuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref();
        let command = Command::Apply(RequestBuf::UserRevokeRole {
            user: r.name.clone().into_bytes(),
            role: r.role.clone().into_bytes(),
        });
        let header = self.change(&request, vec![Need::Admin], command).await?;
        Ok(Response::new(PbAuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<PbAuthRoleAddRequest>,
    ) -> Result<Response<PbAuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone().into_bytes();
        if name.is_empty() {
            return Err(error::role_empty());
        }
        let header = self.change(&request, vec![Need::Admin], Command::Apply(RequestBuf::RoleAdd { name })).await?;
        Ok(Response::new(PbAuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<PbAuthRoleGetRequest>,
    ) -> Result<Response<PbAuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone().into_bytes();
        self.read(&request, vec![Need::AdminOrRole(name.clone())]).await?;
        let (header, roles) = self.member.client.roles().await.map_err(|e| error::status(&e))?;
        let role = roles.into_iter().find(|r| r.name == name).ok_or_else(error::role_not_found)?;
        Ok(Response::new(PbAuthRoleGetResponse {
            header: self.member.header(header),
            perm: role.permissions.into_iter().map(to_pb_permission).collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<PbAuthRoleListRequest>,
    ) -> Result<Response<PbAuthRoleListResponse>, Status> {
        self.read(&request, vec![Need::Admin]).await?;
        let (header, roles) = self.member.client.roles().await.map_err(|e| error::status(&e))?;
        Ok(Response::new(PbAuthRoleListResponse {
            header: self.member.header(header),
            roles: roles.into_iter().map(|r| to_string(r.name)).collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<PbAuthRoleDeleteRequest>,
    ) -> Result<Response<PbAuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone().into_bytes();
        let header = self.change(&request, vec![Need::Admin], Command::Apply(RequestBuf::RoleDelete { name })).await?;
        Ok(Response::new(PbAuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<PbAuthRoleGrantPermissionRequest>,
    ) -> Result<Response<PbAuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref();
        let Some(perm) = &r.perm else { return Err(error::permission_not_given()) };
        let kind = match PbPermissionType::try_from(perm.perm_type) {
            Ok(PbPermissionType::Read) => PermissionType::Read,
            Ok(PbPermissionType::Write) => PermissionType::Write,
            Ok(PbPermissionType::Readwrite) => PermissionType::ReadWrite,
            Err(_) => return Err(error::invalid_auth_mgmt()),
        };
        let command = Command::Apply(RequestBuf::RoleGrantPermission {
            role: r.name.clone().into_bytes(),
            kind,
            key: perm.key.clone(),
            range_end: perm.range_end.clone(),
        });
        let header = self.change(&request, vec![Need::Admin], command).await?;
        Ok(Response::new(PbAuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<PbAuthRoleRevokePermissionRequest>,
    ) -> Result<Response<PbAuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref();
        let command = Command::Apply(RequestBuf::RoleRevokePermission {
            role: r.role.clone().into_bytes(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        });
        let header = self.change(&request, vec![Need::Admin], command).await?;
        Ok(Response::new(PbAuthRoleRevokePermissionResponse { header }))
    }
}
