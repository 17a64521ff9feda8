"""TEST DOUBLE of hashicorp/aws: the resources and the data sources that infra_tf/ uses,
each forwarding to the EC2, S3, IAM or Elastic Load Balancing (elbv2) API (one moto server on
loopback answers all four) through boto3.

The emulator's address comes from the environment exactly as boto3 and the real provider
read it (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_IAM`,
`AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`, else `AWS_ENDPOINT_URL`), so infra_tf/'s HCL
stays unchanged.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

from ._vendor.tf.blocks import SetNestedBlock
from ._vendor.tf.iface import (
    Config,
    CreateContext,
    DataSource,
    DeleteContext,
    PlanContext,
    Provider,
    ReadDataContext,
    Resource,
    State,
    UpdateContext,
)
from ._vendor.tf.schema import Attribute, Block, Schema
from ._vendor.tf.types import Bool, List, Map, Number, Set, String, Unknown
from ._vendor.tf.utils import Diagnostics


def _tags_list(tags: Optional[dict]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted((tags or {}).items())]


def _tags_dict(tags: Optional[list]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def _known(value: Any) -> Any:
    return None if value is Unknown else value


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _computed(name: str, type_=None) -> Attribute:
    return Attribute(name, type_ or String(), computed=True)


def _replaced(name: str, type_, **kw) -> Attribute:
    """An optional argument whose change replaces the resource."""
    return Attribute(name, type_, optional=True, requires_replace=True, **kw)


def _tag_attributes() -> list[Attribute]:
    return [
        Attribute("tags", Map(String()), optional=True, description="Tags of the resource."),
        Attribute("tags_all", Map(String()), computed=True, description="All tags (no default_tags here)."),
    ]


def _declared_or_actual(declared: Any, actual: Any) -> Any:
    """A boolean setting as the real provider reads it: an unset argument means false, so an
    unset one that is false stays unset; otherwise what the API holds."""
    return None if declared is None and not actual else bool(actual)


def _as_declared(declared: dict, actual: dict) -> dict:
    """A nested block's settings as read back: what the API holds for each one the
    configuration sets; what it leaves unset stays unset (the API's defaults are not drift)."""
    return {k: (actual[k] if actual.get(k) is not None else v) if v is not None else None for k, v in declared.items()}


class AwsTestDouble(Provider):
    """The provider: configuration (`region`) and the boto3 client every resource uses."""

    def __init__(self) -> None:
        self.region: Optional[str] = None
        self._ec2 = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get_model_prefix(self) -> str:
        return "aws_"

    def full_name(self) -> str:
        return "registry.terraform.io/hashicorp/aws"

    def get_provider_schema(self, diags: Diagnostics) -> Schema:
        return Schema(
            version=0,
            attributes=[
                Attribute("region", String(), optional=True, description="AWS region (else AWS_REGION)."),
            ]
        )

    def validate_config(self, diags: Diagnostics, config: Config) -> None:
        pass

    def configure_provider(self, diags: Diagnostics, config: Config) -> None:
        self.region = _known(config.get("region"))

    def ec2(self):
        # OpenTofu calls in parallel (10 threads): build one client, once.
        with self._lock:
            if self._ec2 is None:
                import boto3

                self._ec2 = boto3.client("ec2", region_name=self.region)
        return self._ec2

    def client(self, service: str):
        """The s3, iam or elbv2 client (boto3 reads AWS_ENDPOINT_URL_<SERVICE> / AWS_ENDPOINT_URL itself).
        S3 is addressed path-style: the emulator is an IP address, which has no bucket subdomains."""
        with self._lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                config = Config(s3={"addressing_style": "path"}) if service == "s3" else None
                self._clients[service] = boto3.client(service, region_name=self.region, config=config)
        return self._clients[service]

    def get_data_sources(self) -> list:
        return [AmiDataSource, SubnetDataSource]

    def get_resources(self) -> list:
        return [
            KeyPair,
            SecurityGroup,
            SecurityGroupIngressRule,
            SecurityGroupEgressRule,
            Instance,
            S3Bucket,
            S3BucketPublicAccessBlock,
            S3BucketEncryption,
            S3BucketVersioning,
            S3BucketLifecycle,
            S3BucketPolicy,
            IamRole,
            IamRolePolicy,
            IamInstanceProfile,
            LoadBalancer,
            TargetGroup,
            TargetGroupAttachment,
            Listener,
        ]


class _Ec2Resource(Resource):
    """Shared plumbing: the client, tag updates, and plans that keep tags_all in step."""

    def __init__(self, provider: AwsTestDouble) -> None:
        self.provider = provider

    @property
    def ec2(self):
        return self.provider.ec2()

    def plan(self, ctx: PlanContext, current: Optional[State], planned: State) -> Optional[State]:
        if "tags" in ctx.changed_fields:
            planned["tags_all"] = dict(planned.get("tags") or {})
        return planned

    def _tag_specifications(self, resource_type: str, planned: State) -> list[dict]:
        tags = planned.get("tags") or {}
        return [{"ResourceType": resource_type, "Tags": _tags_list(tags)}] if tags else []

    def _sync_tags(self, resource_id: str, old: Optional[dict], new: Optional[dict]) -> None:
        old, new = old or {}, new or {}
        removed = [{"Key": k} for k in old if k not in new]
        if removed:
            self.ec2.delete_tags(Resources=[resource_id], Tags=removed)
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            self.ec2.create_tags(Resources=[resource_id], Tags=_tags_list(changed))

    def _fail(self, ctx, action: str, exc: Exception) -> None:
        ctx.diagnostics.add_error(f"{ctx.type_name}: {action} failed", str(exc))


# -- aws_key_pair --------------------------------------------------------------------------
class KeyPair(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "key_pair"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                Attribute("key_name", String(), required=True, requires_replace=True),
                Attribute("public_key", String(), required=True, requires_replace=True),
                _computed("key_pair_id"),
                _computed("fingerprint"),
                _computed("key_type"),
                _computed("arn"),
                *_tag_attributes(),
            ]
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        try:
            self.ec2.import_key_pair(
                KeyName=planned["key_name"],
                PublicKeyMaterial=planned["public_key"],
                TagSpecifications=self._tag_specifications("key-pair", planned),
            )
        except Exception as exc:  # surfaced to OpenTofu as a diagnostic
            self._fail(ctx, "ImportKeyPair", exc)
            return None
        return self.read(ctx, planned)

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            pairs = self.ec2.describe_key_pairs(KeyNames=[current["key_name"]])["KeyPairs"]
        except Exception as exc:
            if _error_code(exc) == "InvalidKeyPair.NotFound":
                return None
            raise
        pair = pairs[0]
        region = self.ec2.meta.region_name
        return {
            **current,
            "id": pair["KeyName"],
            "key_name": pair["KeyName"],
            "key_pair_id": pair["KeyPairId"],
            "fingerprint": pair.get("KeyFingerprint"),
            "key_type": pair.get("KeyType"),
            "arn": f"arn:aws:ec2:{region}:000000000000:key-pair/{pair['KeyName']}",
            "tags": _tags_dict(pair.get("Tags")) or current.get("tags"),
            "tags_all": _tags_dict(pair.get("Tags")),
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["key_pair_id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        self.ec2.delete_key_pair(KeyName=current["key_name"])
        return None


# -- aws_security_group --------------------------------------------------------------------
class SecurityGroup(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "security_group"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("owner_id"),
                Attribute("name", String(), required=True, requires_replace=True),
                Attribute(
                    "description",
                    String(),
                    optional=True,
                    computed=True,
                    requires_replace=True,
                    default="Managed by Terraform",
                ),
                Attribute("vpc_id", String(), optional=True, computed=True, requires_replace=True),
                *_tag_attributes(),
            ]
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args = {"GroupName": planned["name"], "Description": planned["description"]}
        if _known(planned.get("vpc_id")):
            args["VpcId"] = planned["vpc_id"]
        try:
            group_id = self.ec2.create_security_group(
                **args, TagSpecifications=self._tag_specifications("security-group", planned)
            )["GroupId"]
        except Exception as exc:
            self._fail(ctx, "CreateSecurityGroup", exc)
            return None
        # As the real provider does: remove AWS's default allow-all egress rule, so that
        # egress is exactly what the configuration declares.
        group = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        if group.get("IpPermissionsEgress"):
            self.ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=group["IpPermissionsEgress"])
        return self.read(ctx, {**planned, "id": group_id})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            groups = self.ec2.describe_security_groups(GroupIds=[current["id"]])["SecurityGroups"]
        except Exception as exc:
            if _error_code(exc) == "InvalidGroup.NotFound":
                return None
            raise
        group = groups[0]
        region = self.ec2.meta.region_name
        tags = _tags_dict(group.get("Tags"))
        return {
            **current,
            "id": group["GroupId"],
            "arn": f"arn:aws:ec2:{region}:{group['OwnerId']}:security-group/{group['GroupId']}",
            "owner_id": group["OwnerId"],
            "name": group["GroupName"],
            "description": group["Description"],
            "vpc_id": group.get("VpcId"),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.ec2.delete_security_group(GroupId=current["id"])
        except Exception as exc:
            if _error_code(exc) != "InvalidGroup.NotFound":
                self._fail(ctx, "DeleteSecurityGroup", exc)
        return None


# -- aws_vpc_security_group_{ingress,egress}_rule ------------------------------------------
class _SecurityGroupRule(_Ec2Resource):
    egress = False

    @classmethod
    def get_schema(cls) -> Schema:
        def arg(name, type_):
            return Attribute(name, type_, optional=True, requires_replace=True)

        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("security_group_rule_id"),
                Attribute("security_group_id", String(), required=True, requires_replace=True),
                Attribute("ip_protocol", String(), required=True, requires_replace=True),
                arg("description", String()),
                arg("from_port", Number()),
                arg("to_port", Number()),
                arg("cidr_ipv4", String()),
                arg("cidr_ipv6", String()),
                arg("prefix_list_id", String()),
                arg("referenced_security_group_id", String()),
                *_tag_attributes(),
            ]
        )

    def validate(self, diags: Diagnostics, type_name: str, config: Config):
        super().validate(diags, type_name, config)
        sources = [k for k in ("cidr_ipv4", "cidr_ipv6", "prefix_list_id", "referenced_security_group_id") if config.get(k)]
        if len(sources) != 1:
            diags.add_error(
                f"{type_name}: exactly one of cidr_ipv4, cidr_ipv6, prefix_list_id, referenced_security_group_id",
                f"got {sources or 'none'}",
            )

    def _permission(self, state: State) -> dict:
        permission: dict[str, Any] = {"IpProtocol": state["ip_protocol"]}
        if state.get("from_port") is not None:
            permission["FromPort"] = int(state["from_port"])
        if state.get("to_port") is not None:
            permission["ToPort"] = int(state["to_port"])
        described = {"Description": state["description"]} if state.get("description") else {}
        if state.get("cidr_ipv4"):
            permission["IpRanges"] = [{"CidrIp": state["cidr_ipv4"], **described}]
        if state.get("cidr_ipv6"):
            permission["Ipv6Ranges"] = [{"CidrIpv6": state["cidr_ipv6"], **described}]
        if state.get("prefix_list_id"):
            permission["PrefixListIds"] = [{"PrefixListId": state["prefix_list_id"], **described}]
        if state.get("referenced_security_group_id"):
            permission["UserIdGroupPairs"] = [{"GroupId": state["referenced_security_group_id"], **described}]
        return permission

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        authorize = self.ec2.authorize_security_group_egress if self.egress else self.ec2.authorize_security_group_ingress
        try:
            response = authorize(
                GroupId=planned["security_group_id"],
                IpPermissions=[self._permission(planned)],
                TagSpecifications=self._tag_specifications("security-group-rule", planned),
            )
        except Exception as exc:
            self._fail(ctx, "AuthorizeSecurityGroup" + ("Egress" if self.egress else "Ingress"), exc)
            return None
        rule_id = response["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        return self.read(ctx, {**planned, "id": rule_id})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            rules = self.ec2.describe_security_group_rules(SecurityGroupRuleIds=[current["id"]])["SecurityGroupRules"]
        except Exception as exc:
            if _error_code(exc) in ("InvalidSecurityGroupRuleId.NotFound", "InvalidGroup.NotFound"):
                return None
            raise
        if not rules:
            return None
        rule = rules[0]
        region = self.ec2.meta.region_name
        tags = _tags_dict(rule.get("Tags"))
        referenced = (rule.get("ReferencedGroupInfo") or {}).get("GroupId")
        return {
            **current,
            "id": rule["SecurityGroupRuleId"],
            "security_group_rule_id": rule["SecurityGroupRuleId"],
            "arn": f"arn:aws:ec2:{region}:000000000000:security-group-rule/{rule['SecurityGroupRuleId']}",
            "security_group_id": rule["GroupId"],
            "ip_protocol": rule["IpProtocol"],
            "from_port": rule.get("FromPort", current.get("from_port")),
            "to_port": rule.get("ToPort", current.get("to_port")),
            "cidr_ipv4": rule.get("CidrIpv4"),
            "cidr_ipv6": rule.get("CidrIpv6"),
            "prefix_list_id": rule.get("PrefixListId"),
            "referenced_security_group_id": referenced,
            # moto drops the description of group-referencing rules; keep the declared one.
            "description": rule.get("Description") or current.get("description"),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        revoke = self.ec2.revoke_security_group_egress if self.egress else self.ec2.revoke_security_group_ingress
        try:
            revoke(GroupId=current["security_group_id"], IpPermissions=[self._permission(current)])
        except Exception as exc:
            if _error_code(exc) not in ("InvalidPermission.NotFound", "InvalidGroup.NotFound"):
                self._fail(ctx, "RevokeSecurityGroup" + ("Egress" if self.egress else "Ingress"), exc)
        return None


class SecurityGroupIngressRule(_SecurityGroupRule):
    egress = False

    @classmethod
    def get_name(cls) -> str:
        return "vpc_security_group_ingress_rule"


class SecurityGroupEgressRule(_SecurityGroupRule):
    egress = True

    @classmethod
    def get_name(cls) -> str:
        return "vpc_security_group_egress_rule"


# -- aws_instance --------------------------------------------------------------------------
_METADATA_FIELDS = {
    "http_endpoint": "HttpEndpoint",
    "http_tokens": "HttpTokens",
    "http_put_response_hop_limit": "HttpPutResponseHopLimit",
}


class Instance(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "instance"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("public_ip"),
                _computed("private_ip"),
                _computed("public_dns"),
                _computed("private_dns"),
                _computed("instance_state"),
                _computed("availability_zone"),
                Attribute("ami", String(), required=True, requires_replace=True),
                Attribute("instance_type", String(), required=True, requires_replace=True),
                _replaced("key_name", String()),
                _replaced("subnet_id", String(), computed=True),
                _replaced("vpc_security_group_ids", Set(String()), computed=True),
                _replaced("associate_public_ip_address", Bool(), computed=True),
                _replaced("monitoring", Bool()),
                _replaced("ebs_optimized", Bool(), computed=True),
                # Changed in place (the instance's profile association), as the real provider does.
                Attribute("iam_instance_profile", String(), optional=True),
                *_tag_attributes(),
            ],
            block_types=[
                SetNestedBlock(
                    "metadata_options",
                    Block(
                        attributes=[
                            Attribute("http_endpoint", String(), optional=True),
                            Attribute("http_tokens", String(), optional=True),
                            Attribute("http_put_response_hop_limit", Number(), optional=True),
                        ]
                    ),
                ),
                SetNestedBlock(
                    "root_block_device",
                    Block(
                        attributes=[
                            Attribute("encrypted", Bool(), optional=True),
                            Attribute("volume_type", String(), optional=True),
                            Attribute("volume_size", Number(), optional=True),
                            Attribute("delete_on_termination", Bool(), optional=True),
                        ]
                    ),
                ),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args: dict[str, Any] = {
            "ImageId": planned["ami"],
            "InstanceType": planned["instance_type"],
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": self._tag_specifications("instance", planned),
        }
        if planned.get("key_name"):
            args["KeyName"] = planned["key_name"]
        if _known(planned.get("vpc_security_group_ids")):
            args["SecurityGroupIds"] = list(planned["vpc_security_group_ids"])
        if _known(planned.get("subnet_id")):
            args["SubnetId"] = planned["subnet_id"]
        else:
            # As EC2 does: no subnet given means the default subnet of the default VPC
            # (moto alone would invent an address outside any subnet).
            subnets = self.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
            if subnets:
                args["SubnetId"] = min(subnets, key=lambda s: s["AvailabilityZone"])["SubnetId"]
        if _known(planned.get("iam_instance_profile")):
            args["IamInstanceProfile"] = {"Name": planned["iam_instance_profile"]}
        if planned.get("monitoring") is not None:
            args["Monitoring"] = {"Enabled": bool(planned["monitoring"])}
        if _known(planned.get("ebs_optimized")) is not None:
            args["EbsOptimized"] = bool(planned["ebs_optimized"])
        metadata = (planned.get("metadata_options") or [None])[0]
        if metadata:
            args["MetadataOptions"] = {
                api: (int(metadata[k]) if k == "http_put_response_hop_limit" else metadata[k])
                for k, api in _METADATA_FIELDS.items()
                if metadata.get(k) is not None
            }
        root = (planned.get("root_block_device") or [None])[0]
        if root:
            ebs = {
                "Encrypted": root.get("encrypted"),
                "VolumeType": root.get("volume_type"),
                "VolumeSize": int(root["volume_size"]) if root.get("volume_size") is not None else None,
                "DeleteOnTermination": root.get("delete_on_termination"),
            }
            args["BlockDeviceMappings"] = [
                {"DeviceName": "/dev/xvda", "Ebs": {k: v for k, v in ebs.items() if v is not None}}
            ]
        try:
            instance = self.ec2.run_instances(**args)["Instances"][0]
        except Exception as exc:
            self._fail(ctx, "RunInstances", exc)
            return None
        state = self.read(ctx, {**planned, "id": instance["InstanceId"]})
        if state is not None and planned.get("associate_public_ip_address") is not None:
            state["associate_public_ip_address"] = planned["associate_public_ip_address"]
        return state

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[current["id"]])["Reservations"]
        except Exception as exc:
            if _error_code(exc) == "InvalidInstanceID.NotFound":
                return None
            raise
        instances = [i for r in reservations for i in r["Instances"]]
        if not instances or instances[0]["State"]["Name"] in ("terminated", "shutting-down"):
            return None
        instance = instances[0]
        tags = _tags_dict(instance.get("Tags"))
        state = {
            **current,
            "id": instance["InstanceId"],
            "arn": f"arn:aws:ec2:{self.ec2.meta.region_name}:000000000000:instance/{instance['InstanceId']}",
            "public_ip": instance.get("PublicIpAddress"),
            "private_ip": instance.get("PrivateIpAddress"),
            "public_dns": instance.get("PublicDnsName"),
            "private_dns": instance.get("PrivateDnsName"),
            "instance_state": instance["State"]["Name"],
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "ami": instance["ImageId"],
            "instance_type": instance["InstanceType"],
            "key_name": instance.get("KeyName"),
            "subnet_id": instance.get("SubnetId"),
            "vpc_security_group_ids": sorted(g["GroupId"] for g in instance.get("SecurityGroups", [])),
            "ebs_optimized": bool(instance.get("EbsOptimized")),
            # The real provider reads the profile's name back from its ARN.
            "iam_instance_profile": ((instance.get("IamInstanceProfile") or {}).get("Arn") or "").rpartition("/")[2] or None,
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }
        if current.get("monitoring") is not None:
            state["monitoring"] = instance.get("Monitoring", {}).get("State") in ("enabled", "pending")
        if _known(current.get("associate_public_ip_address")) is None:
            state["associate_public_ip_address"] = bool(instance.get("PublicIpAddress"))
        state["metadata_options"] = self._read_metadata(instance, current)
        state["root_block_device"] = self._read_root_device(instance, current)
        return state

    def _read_metadata(self, instance: dict, current: State) -> list:
        declared = (current.get("metadata_options") or [None])[0]
        if not declared:
            return current.get("metadata_options") or []
        actual = instance.get("MetadataOptions") or {}
        return [{k: actual.get(api, declared.get(k)) if declared.get(k) is not None else None for k, api in _METADATA_FIELDS.items()}]

    def _read_root_device(self, instance: dict, current: State) -> list:
        declared = (current.get("root_block_device") or [None])[0]
        if not declared:
            return current.get("root_block_device") or []
        mappings = instance.get("BlockDeviceMappings") or []
        if not mappings:
            return [declared]
        volume_id = mappings[0]["Ebs"]["VolumeId"]
        volume = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        actual = {
            "encrypted": volume.get("Encrypted"),
            "volume_type": volume.get("VolumeType"),
            "volume_size": volume.get("Size"),
            "delete_on_termination": mappings[0]["Ebs"].get("DeleteOnTermination"),
        }
        return [_as_declared(declared, actual)]

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        metadata = (planned.get("metadata_options") or [None])[0]
        if metadata and metadata != (current.get("metadata_options") or [None])[0]:
            self.ec2.modify_instance_metadata_options(
                InstanceId=current["id"],
                **{
                    api: (int(metadata[k]) if k == "http_put_response_hop_limit" else metadata[k])
                    for k, api in _METADATA_FIELDS.items()
                    if metadata.get(k) is not None
                },
            )
        if planned.get("iam_instance_profile") != current.get("iam_instance_profile"):
            self._set_instance_profile(ctx, current["id"], planned.get("iam_instance_profile"))
        if planned.get("root_block_device") != current.get("root_block_device"):
            ctx.diagnostics.add_error(
                "aws_instance: the test double cannot change root_block_device in place",
                "Taint the instance (tofu apply -replace=...) to rebuild it.",
            )
            return current
        return self.read(ctx, planned)

    def _set_instance_profile(self, ctx, instance_id: str, profile: Optional[str]) -> None:
        associations = self.ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [instance_id]}]
        )["IamInstanceProfileAssociations"]
        current = [a for a in associations if a.get("State") in ("associating", "associated")]
        try:
            if current and profile:
                self.ec2.replace_iam_instance_profile_association(
                    AssociationId=current[0]["AssociationId"], IamInstanceProfile={"Name": profile}
                )
            elif current:
                self.ec2.disassociate_iam_instance_profile(AssociationId=current[0]["AssociationId"])
            elif profile:
                self.ec2.associate_iam_instance_profile(InstanceId=instance_id, IamInstanceProfile={"Name": profile})
        except Exception as exc:
            self._fail(ctx, "AssociateIamInstanceProfile", exc)

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.ec2.terminate_instances(InstanceIds=[current["id"]])
        except Exception as exc:
            if _error_code(exc) != "InvalidInstanceID.NotFound":
                self._fail(ctx, "TerminateInstances", exc)
        return None


# -- S3 and IAM: shared helpers -------------------------------------------------------------
_CANONICAL_UNKNOWN = "<unknown>"


def _canonical(value: Any) -> Any:
    """A hashable, order-free form of a nested block's value (sets of objects, as HCL sees them)."""
    if value is Unknown:
        return _CANONICAL_UNKNOWN
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(sorted((_canonical(v) for v in value), key=repr))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Blocks(SetNestedBlock):
    """A set of nested blocks compared in depth: the vendored framework compares only a
    block's own attributes, so a change in a block nested inside it (drift in a lifecycle
    rule's noncurrent_version_expiration, say) would be hidden behind the old encoding."""

    def semantically_equal(self, a_decoded, b_decoded) -> bool:
        return _canonical(a_decoded) == _canonical(b_decoded)


def _json_equal(a: Any, b: Any) -> bool:
    def load(value):
        return json.loads(value) if isinstance(value, str) else value

    try:
        return load(a) == load(b)
    except (TypeError, ValueError):
        return False


def _policy_read(current: Optional[str], actual: Any) -> str:
    """A policy document as read back: the configured string when it means the same JSON
    (so that key order and spacing never show as a change), else what the API holds."""
    if isinstance(current, str) and _json_equal(current, actual):
        return current
    return actual if isinstance(actual, str) else json.dumps(actual)


_S3_GONE = {"404", "NoSuchBucket"}


class _AwsApiResource(_Ec2Resource):
    """An S3 or IAM resource: the same plan/tags plumbing, another client."""

    service = "s3"

    @property
    def api(self):
        return self.provider.client(self.service)

    def _region(self) -> str:
        return self.api.meta.region_name


# -- aws_s3_bucket ---------------------------------------------------------------------------
class S3Bucket(_AwsApiResource):
    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("region"),
                _computed("bucket_domain_name"),
                _computed("bucket_regional_domain_name"),
                Attribute("bucket", String(), optional=True, computed=True, requires_replace=True),
                Attribute(
                    "force_destroy",
                    Bool(),
                    optional=True,
                    description="Delete every object version and delete marker before the bucket.",
                ),
                *_tag_attributes(),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        name = _known(planned.get("bucket"))
        if not name:
            import uuid

            name = f"terraform-{uuid.uuid4().hex[:24]}"
        args: dict[str, Any] = {"Bucket": name}
        region = self._region()
        if region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.api.create_bucket(**args)
            if planned.get("tags"):
                self.api.put_bucket_tagging(Bucket=name, Tagging={"TagSet": _tags_list(planned["tags"])})
        except Exception as exc:
            self._fail(ctx, "CreateBucket", exc)
            return None
        return self.read(ctx, {**planned, "id": name, "bucket": name})

    def read(self, ctx, current: State) -> Optional[State]:
        name = current["id"]
        try:
            self.api.head_bucket(Bucket=name)
            region = self.api.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
        except Exception as exc:
            if _error_code(exc) in _S3_GONE:
                return None
            raise
        try:
            tags = _tags_dict(self.api.get_bucket_tagging(Bucket=name)["TagSet"])
        except Exception as exc:
            if _error_code(exc) != "NoSuchTagSet":
                raise
            tags = {}
        return {
            **current,
            "id": name,
            "bucket": name,
            "arn": f"arn:aws:s3:::{name}",
            "region": region,
            "bucket_domain_name": f"{name}.s3.amazonaws.com",
            "bucket_regional_domain_name": f"{name}.s3.{region}.amazonaws.com",
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        if (planned.get("tags") or {}) != (current.get("tags") or {}):
            if planned.get("tags"):
                self.api.put_bucket_tagging(Bucket=current["id"], Tagging={"TagSet": _tags_list(planned["tags"])})
            else:
                self.api.delete_bucket_tagging(Bucket=current["id"])
        return self.read(ctx, {**planned, "id": current["id"]})

    def _empty(self, name: str) -> list[str]:
        """Delete every object version and delete marker; return the keys S3 refused."""
        refused: list[str] = []
        # moto (5.2) fails with a 500 when it deletes a version of a key that has a delete
        # marker in a bucket whose versioning is Suspended (which the versioning resource's
        # destroy leaves behind); S3 itself deletes them either way. Versioning back on for the
        # last moments of a bucket that is about to go changes nothing else.
        if self.api.get_bucket_versioning(Bucket=name).get("Status") == "Suspended":
            self.api.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        paginator = self.api.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=name):
            entries = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for start in range(0, len(entries), 1000):
                response = self.api.delete_objects(
                    Bucket=name, Delete={"Objects": entries[start : start + 1000], "Quiet": True}
                )
                refused += [f"{e['Key']} ({e.get('Code')})" for e in response.get("Errors", [])]
        return refused

    def delete(self, ctx: DeleteContext, current: State):
        name = current["id"]
        try:
            if current.get("force_destroy"):
                refused = self._empty(name)
                if refused:
                    ctx.diagnostics.add_error(
                        f"{ctx.type_name}: emptying bucket {name} failed", "S3 refused: " + ", ".join(refused[:10])
                    )
                    return current
            self.api.delete_bucket(Bucket=name)
        except Exception as exc:
            if _error_code(exc) in _S3_GONE:
                return None
            self._fail(ctx, "DeleteBucket", exc)
            return current
        return None


class _BucketPart(_AwsApiResource):
    """A bucket's sub-resource (its id is the bucket's name); read returns None when either
    the bucket or the part is gone, so deletions made in the emulator show in the next plan."""

    missing: tuple[str, ...] = ()
    action = ""

    def _fetch(self, bucket: str) -> Any:
        raise NotImplementedError

    def _put(self, planned: State) -> None:
        raise NotImplementedError

    def _state(self, current: State, fetched: Any) -> State:
        raise NotImplementedError

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        try:
            self._put(planned)
        except Exception as exc:
            self._fail(ctx, self.action, exc)
            return None
        return self.read(ctx, {**planned, "id": planned["bucket"]})

    def read(self, ctx, current: State) -> Optional[State]:
        bucket = current.get("bucket") or current["id"]
        try:
            fetched = self._fetch(bucket)
        except Exception as exc:
            if _error_code(exc) in _S3_GONE or _error_code(exc) in self.missing:
                return None
            raise
        if fetched is None:
            return None
        return {**self._state(current, fetched), "id": bucket, "bucket": bucket}

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        try:
            self._put(planned)
        except Exception as exc:
            self._fail(ctx, self.action, exc)
            return current
        return self.read(ctx, {**planned, "id": current["id"]})

    def _remove(self, bucket: str) -> None:
        raise NotImplementedError

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self._remove(current["bucket"])
        except Exception as exc:
            if _error_code(exc) not in _S3_GONE and _error_code(exc) not in self.missing:
                self._fail(ctx, "Delete" + self.action.removeprefix("Put"), exc)
                return current
        return None


def _bucket_attribute() -> Attribute:
    return Attribute("bucket", String(), required=True, requires_replace=True)


# -- aws_s3_bucket_public_access_block -------------------------------------------------------
_PUBLIC_ACCESS_FIELDS = {
    "block_public_acls": "BlockPublicAcls",
    "block_public_policy": "BlockPublicPolicy",
    "ignore_public_acls": "IgnorePublicAcls",
    "restrict_public_buckets": "RestrictPublicBuckets",
}


class S3BucketPublicAccessBlock(_BucketPart):
    missing = ("NoSuchPublicAccessBlockConfiguration",)
    action = "PutPublicAccessBlock"

    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket_public_access_block"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _bucket_attribute(),
                *[Attribute(name, Bool(), optional=True) for name in _PUBLIC_ACCESS_FIELDS],
            ],
        )

    def _fetch(self, bucket: str) -> Any:
        return self.api.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]

    def _put(self, planned: State) -> None:
        self.api.put_public_access_block(
            Bucket=planned["bucket"],
            PublicAccessBlockConfiguration={api: bool(planned.get(k)) for k, api in _PUBLIC_ACCESS_FIELDS.items()},
        )

    def _state(self, current: State, fetched: Any) -> State:
        state = dict(current)
        for k, api in _PUBLIC_ACCESS_FIELDS.items():
            state[k] = _declared_or_actual(current.get(k), fetched.get(api))
        return state

    def _remove(self, bucket: str) -> None:
        self.api.delete_public_access_block(Bucket=bucket)


# -- aws_s3_bucket_server_side_encryption_configuration ---------------------------------------
class S3BucketEncryption(_BucketPart):
    missing = ("ServerSideEncryptionConfigurationNotFoundError",)
    action = "PutBucketEncryption"

    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket_server_side_encryption_configuration"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[_computed("id"), _bucket_attribute()],
            block_types=[
                _Blocks(
                    "rule",
                    Block(
                        attributes=[Attribute("bucket_key_enabled", Bool(), optional=True)],
                        block_types=[
                            _Blocks(
                                "apply_server_side_encryption_by_default",
                                Block(
                                    attributes=[
                                        Attribute("sse_algorithm", String(), required=True),
                                        Attribute("kms_master_key_id", String(), optional=True),
                                    ]
                                ),
                            )
                        ],
                    ),
                )
            ],
        )

    def _fetch(self, bucket: str) -> Any:
        return self.api.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]

    def _put(self, planned: State) -> None:
        rules = []
        for rule in planned.get("rule") or []:
            api_rule: dict[str, Any] = {}
            default = (rule.get("apply_server_side_encryption_by_default") or [None])[0]
            if default:
                api_rule["ApplyServerSideEncryptionByDefault"] = {
                    "SSEAlgorithm": default["sse_algorithm"],
                    **({"KMSMasterKeyID": default["kms_master_key_id"]} if default.get("kms_master_key_id") else {}),
                }
            if rule.get("bucket_key_enabled") is not None:
                api_rule["BucketKeyEnabled"] = bool(rule["bucket_key_enabled"])
            rules.append(api_rule)
        self.api.put_bucket_encryption(Bucket=planned["bucket"], ServerSideEncryptionConfiguration={"Rules": rules})

    def _state(self, current: State, fetched: Any) -> State:
        declared = (current.get("rule") or [{}])[0] or {}
        rules = []
        for rule in fetched:
            default = rule.get("ApplyServerSideEncryptionByDefault")
            key_enabled = rule.get("BucketKeyEnabled")
            rules.append(
                {
                    "bucket_key_enabled": None
                    if declared.get("bucket_key_enabled") is None and not key_enabled
                    else bool(key_enabled),
                    "apply_server_side_encryption_by_default": [
                        {"sse_algorithm": default["SSEAlgorithm"], "kms_master_key_id": default.get("KMSMasterKeyID")}
                    ]
                    if default
                    else [],
                }
            )
        return {**current, "rule": rules}

    def _remove(self, bucket: str) -> None:
        self.api.delete_bucket_encryption(Bucket=bucket)


# -- aws_s3_bucket_versioning ----------------------------------------------------------------
class S3BucketVersioning(_BucketPart):
    action = "PutBucketVersioning"

    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket_versioning"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[_computed("id"), _bucket_attribute()],
            block_types=[
                _Blocks(
                    "versioning_configuration",
                    Block(
                        attributes=[
                            Attribute("status", String(), required=True),
                            Attribute("mfa_delete", String(), optional=True),
                        ]
                    ),
                )
            ],
        )

    def _fetch(self, bucket: str) -> Any:
        return self.api.get_bucket_versioning(Bucket=bucket)

    def _put(self, planned: State) -> None:
        config = (planned.get("versioning_configuration") or [{}])[0] or {}
        status = config.get("status")
        if status == "Disabled":  # the provider's name for a bucket that was never versioned
            return
        self.api.put_bucket_versioning(Bucket=planned["bucket"], VersioningConfiguration={"Status": status})

    def _state(self, current: State, fetched: Any) -> State:
        declared = (current.get("versioning_configuration") or [{}])[0] or {}
        return {
            **current,
            "versioning_configuration": [
                {
                    # Never versioned reads as "Disabled", as in the real provider.
                    "status": fetched.get("Status") or "Disabled",
                    "mfa_delete": fetched.get("MFADelete") if declared.get("mfa_delete") else None,
                }
            ],
        }

    def _remove(self, bucket: str) -> None:
        # As the real provider does: a versioned bucket cannot go back to unversioned, so
        # destroying this resource suspends versioning.
        if self.api.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
            self.api.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})


# -- aws_s3_bucket_lifecycle_configuration ---------------------------------------------------
class S3BucketLifecycle(_BucketPart):
    missing = ("NoSuchLifecycleConfiguration",)
    action = "PutBucketLifecycleConfiguration"

    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket_lifecycle_configuration"

    @classmethod
    def get_schema(cls) -> Schema:
        def block(name: str, *attributes: Attribute) -> _Blocks:
            return _Blocks(name, Block(attributes=list(attributes)))

        return Schema(
            version=0,
            attributes=[_computed("id"), _bucket_attribute()],
            block_types=[
                _Blocks(
                    "rule",
                    Block(
                        attributes=[
                            Attribute("id", String(), required=True),
                            Attribute("status", String(), required=True),
                        ],
                        block_types=[
                            block("filter", Attribute("prefix", String(), optional=True)),
                            block(
                                "expiration",
                                Attribute("days", Number(), optional=True),
                                Attribute("expired_object_delete_marker", Bool(), optional=True),
                            ),
                            block(
                                "noncurrent_version_expiration",
                                Attribute("noncurrent_days", Number(), optional=True),
                                Attribute("newer_noncurrent_versions", Number(), optional=True),
                            ),
                            block(
                                "abort_incomplete_multipart_upload",
                                Attribute("days_after_initiation", Number(), optional=True),
                            ),
                        ],
                    ),
                )
            ],
        )

    def _fetch(self, bucket: str) -> Any:
        return self.api.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]

    @staticmethod
    def _api_rule(rule: dict) -> dict:
        def one(name):
            return (rule.get(name) or [None])[0]

        def ints(values: dict) -> dict:
            return {k: (int(v) if isinstance(v, float) else v) for k, v in values.items() if v is not None}

        api: dict[str, Any] = {"ID": rule["id"], "Status": rule["status"]}
        filter_ = one("filter")
        api["Filter"] = {"Prefix": filter_["prefix"]} if filter_ and filter_.get("prefix") is not None else {}
        if one("expiration"):
            api["Expiration"] = ints(
                {"Days": one("expiration").get("days"),
                 "ExpiredObjectDeleteMarker": one("expiration").get("expired_object_delete_marker")}
            )
        if one("noncurrent_version_expiration"):
            api["NoncurrentVersionExpiration"] = ints(
                {"NoncurrentDays": one("noncurrent_version_expiration").get("noncurrent_days"),
                 "NewerNoncurrentVersions": one("noncurrent_version_expiration").get("newer_noncurrent_versions")}
            )
        if one("abort_incomplete_multipart_upload"):
            api["AbortIncompleteMultipartUpload"] = ints(
                {"DaysAfterInitiation": one("abort_incomplete_multipart_upload").get("days_after_initiation")}
            )
        return api

    def _put(self, planned: State) -> None:
        self.api.put_bucket_lifecycle_configuration(
            Bucket=planned["bucket"],
            LifecycleConfiguration={"Rules": [self._api_rule(rule) for rule in planned.get("rule") or []]},
        )

    def _state(self, current: State, fetched: Any) -> State:
        declared = {r.get("id"): r for r in current.get("rule") or []}
        rules = []
        for rule in fetched:
            mine = declared.get(rule.get("ID")) or {}

            def block(name, values, mine=mine):
                # A block absent from the configuration and from the API stays absent.
                if not any(v is not None for v in values.values()) and not mine.get(name):
                    return []
                return [values]

            filter_ = rule.get("Filter")
            prefix = (filter_ or {}).get("Prefix") or rule.get("Prefix") or None
            expiration = rule.get("Expiration") or {}
            noncurrent = rule.get("NoncurrentVersionExpiration") or {}
            abort = rule.get("AbortIncompleteMultipartUpload") or {}
            rules.append(
                {
                    "id": rule.get("ID"),
                    "status": rule.get("Status"),
                    "filter": [{"prefix": prefix}] if filter_ is not None or mine.get("filter") else [],
                    "expiration": block(
                        "expiration",
                        {"days": expiration.get("Days"),
                         "expired_object_delete_marker": expiration.get("ExpiredObjectDeleteMarker")},
                    ),
                    "noncurrent_version_expiration": block(
                        "noncurrent_version_expiration",
                        {"noncurrent_days": noncurrent.get("NoncurrentDays"),
                         "newer_noncurrent_versions": noncurrent.get("NewerNoncurrentVersions")},
                    ),
                    "abort_incomplete_multipart_upload": block(
                        "abort_incomplete_multipart_upload", {"days_after_initiation": abort.get("DaysAfterInitiation")}
                    ),
                }
            )
        return {**current, "rule": rules}

    def _remove(self, bucket: str) -> None:
        self.api.delete_bucket_lifecycle(Bucket=bucket)


# -- aws_s3_bucket_policy --------------------------------------------------------------------
class S3BucketPolicy(_BucketPart):
    missing = ("NoSuchBucketPolicy",)
    action = "PutBucketPolicy"

    @classmethod
    def get_name(cls) -> str:
        return "s3_bucket_policy"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[_computed("id"), _bucket_attribute(), Attribute("policy", String(), required=True)],
        )

    def _fetch(self, bucket: str) -> Any:
        return self.api.get_bucket_policy(Bucket=bucket)["Policy"]

    def _put(self, planned: State) -> None:
        self.api.put_bucket_policy(Bucket=planned["bucket"], Policy=planned["policy"])

    def _state(self, current: State, fetched: Any) -> State:
        return {**current, "policy": _policy_read(current.get("policy"), fetched)}

    def _remove(self, bucket: str) -> None:
        self.api.delete_bucket_policy(Bucket=bucket)


# -- aws_iam_role ----------------------------------------------------------------------------
_IAM_GONE = {"NoSuchEntity"}


class _IamResource(_AwsApiResource):
    service = "iam"

    pass


class IamRole(_IamResource):
    @classmethod
    def get_name(cls) -> str:
        return "iam_role"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("unique_id"),
                _computed("create_date"),
                Attribute("name", String(), optional=True, computed=True, requires_replace=True),
                Attribute("path", String(), optional=True, computed=True, requires_replace=True, default="/"),
                Attribute("assume_role_policy", String(), required=True),
                Attribute("description", String(), optional=True),
                Attribute("max_session_duration", Number(), optional=True, computed=True, default=3600),
                *_tag_attributes(),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        name = _known(planned.get("name"))
        if not name:
            import uuid

            name = f"terraform-{uuid.uuid4().hex[:24]}"
        args: dict[str, Any] = {
            "RoleName": name,
            "Path": _known(planned.get("path")) or "/",
            "AssumeRolePolicyDocument": planned["assume_role_policy"],
            "MaxSessionDuration": int(_known(planned.get("max_session_duration")) or 3600),
        }
        if planned.get("description"):
            args["Description"] = planned["description"]
        if planned.get("tags"):
            args["Tags"] = _tags_list(planned["tags"])
        try:
            self.api.create_role(**args)
        except Exception as exc:
            self._fail(ctx, "CreateRole", exc)
            return None
        return self.read(ctx, {**planned, "id": name, "name": name})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            role = self.api.get_role(RoleName=current["id"])["Role"]
        except Exception as exc:
            if _error_code(exc) in _IAM_GONE:
                return None
            raise
        tags = _tags_dict(role.get("Tags"))
        created = role.get("CreateDate")
        return {
            **current,
            "id": role["RoleName"],
            "name": role["RoleName"],
            "path": role.get("Path", "/"),
            "arn": role["Arn"],
            "unique_id": role["RoleId"],
            "create_date": created.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(created, "strftime") else created,
            "assume_role_policy": _policy_read(current.get("assume_role_policy"), role["AssumeRolePolicyDocument"]),
            "description": role.get("Description") or (None if not current.get("description") else ""),
            "max_session_duration": role.get("MaxSessionDuration", 3600),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        name = current["id"]
        try:
            if not _json_equal(planned["assume_role_policy"], current.get("assume_role_policy")):
                self.api.update_assume_role_policy(RoleName=name, PolicyDocument=planned["assume_role_policy"])
            if planned.get("description") != current.get("description") or planned.get(
                "max_session_duration"
            ) != current.get("max_session_duration"):
                self.api.update_role(
                    RoleName=name,
                    Description=planned.get("description") or "",
                    MaxSessionDuration=int(_known(planned.get("max_session_duration")) or 3600),
                )
            old, new = current.get("tags") or {}, planned.get("tags") or {}
            if [k for k in old if k not in new]:
                self.api.untag_role(RoleName=name, TagKeys=[k for k in old if k not in new])
            if {k: v for k, v in new.items() if old.get(k) != v}:
                self.api.tag_role(RoleName=name, Tags=_tags_list({k: v for k, v in new.items() if old.get(k) != v}))
        except Exception as exc:
            self._fail(ctx, "UpdateRole", exc)
            return current
        return self.read(ctx, {**planned, "id": name})

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.api.delete_role(RoleName=current["id"])
        except Exception as exc:
            if _error_code(exc) not in _IAM_GONE:
                self._fail(ctx, "DeleteRole", exc)
                return current
        return None


# -- aws_iam_role_policy ---------------------------------------------------------------------
class IamRolePolicy(_IamResource):
    @classmethod
    def get_name(cls) -> str:
        return "iam_role_policy"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                Attribute("name", String(), optional=True, computed=True, requires_replace=True),
                Attribute("role", String(), required=True, requires_replace=True),
                Attribute("policy", String(), required=True),
            ],
        )

    def _put(self, planned: State, name: str) -> None:
        self.api.put_role_policy(RoleName=planned["role"], PolicyName=name, PolicyDocument=planned["policy"])

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        name = _known(planned.get("name"))
        if not name:
            import uuid

            name = f"terraform-{uuid.uuid4().hex[:24]}"
        try:
            self._put(planned, name)
        except Exception as exc:
            self._fail(ctx, "PutRolePolicy", exc)
            return None
        # The real provider's id: "role:policy".
        return self.read(ctx, {**planned, "name": name, "id": f"{planned['role']}:{name}"})

    def read(self, ctx, current: State) -> Optional[State]:
        role, _, name = current["id"].partition(":")
        try:
            document = self.api.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        except Exception as exc:
            if _error_code(exc) in _IAM_GONE:
                return None
            raise
        return {**current, "role": role, "name": name, "policy": _policy_read(current.get("policy"), document)}

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        try:
            self._put({**planned, "role": current["role"]}, current["name"])
        except Exception as exc:
            self._fail(ctx, "PutRolePolicy", exc)
            return current
        return self.read(ctx, {**planned, "id": current["id"]})

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.api.delete_role_policy(RoleName=current["role"], PolicyName=current["name"])
        except Exception as exc:
            if _error_code(exc) not in _IAM_GONE:
                self._fail(ctx, "DeleteRolePolicy", exc)
                return current
        return None


# -- aws_iam_instance_profile ----------------------------------------------------------------
class IamInstanceProfile(_IamResource):
    @classmethod
    def get_name(cls) -> str:
        return "iam_instance_profile"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("unique_id"),
                _computed("create_date"),
                Attribute("name", String(), optional=True, computed=True, requires_replace=True),
                Attribute("path", String(), optional=True, computed=True, requires_replace=True, default="/"),
                Attribute("role", String(), optional=True),
                *_tag_attributes(),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        name = _known(planned.get("name"))
        if not name:
            import uuid

            name = f"terraform-{uuid.uuid4().hex[:24]}"
        args: dict[str, Any] = {"InstanceProfileName": name, "Path": _known(planned.get("path")) or "/"}
        if planned.get("tags"):
            args["Tags"] = _tags_list(planned["tags"])
        try:
            self.api.create_instance_profile(**args)
            if planned.get("role"):
                self.api.add_role_to_instance_profile(InstanceProfileName=name, RoleName=planned["role"])
        except Exception as exc:
            self._fail(ctx, "CreateInstanceProfile", exc)
            return self.read(ctx, {**planned, "id": name, "name": name})
        return self.read(ctx, {**planned, "id": name, "name": name})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            profile = self.api.get_instance_profile(InstanceProfileName=current["id"])["InstanceProfile"]
        except Exception as exc:
            if _error_code(exc) in _IAM_GONE:
                return None
            raise
        tags = _tags_dict(profile.get("Tags"))
        roles = profile.get("Roles") or []
        created = profile.get("CreateDate")
        return {
            **current,
            "id": profile["InstanceProfileName"],
            "name": profile["InstanceProfileName"],
            "path": profile.get("Path", "/"),
            "arn": profile["Arn"],
            "unique_id": profile["InstanceProfileId"],
            "create_date": created.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(created, "strftime") else created,
            "role": roles[0]["RoleName"] if roles else None,
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def _detach(self, name: str) -> None:
        for role in self.api.get_instance_profile(InstanceProfileName=name)["InstanceProfile"].get("Roles") or []:
            self.api.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        name = current["id"]
        try:
            if planned.get("role") != current.get("role"):
                self._detach(name)
                if planned.get("role"):
                    self.api.add_role_to_instance_profile(InstanceProfileName=name, RoleName=planned["role"])
            old, new = current.get("tags") or {}, planned.get("tags") or {}
            if [k for k in old if k not in new]:
                self.api.untag_instance_profile(InstanceProfileName=name, TagKeys=[k for k in old if k not in new])
            if {k: v for k, v in new.items() if old.get(k) != v}:
                self.api.tag_instance_profile(
                    InstanceProfileName=name, Tags=_tags_list({k: v for k, v in new.items() if old.get(k) != v})
                )
        except Exception as exc:
            self._fail(ctx, "UpdateInstanceProfile", exc)
            return current
        return self.read(ctx, {**planned, "id": name})

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self._detach(current["id"])
            self.api.delete_instance_profile(InstanceProfileName=current["id"])
        except Exception as exc:
            if _error_code(exc) not in _IAM_GONE:
                self._fail(ctx, "DeleteInstanceProfile", exc)
                return current
        return None


# -- data "aws_ami" ------------------------------------------------------------------------
class AmiDataSource(DataSource):
    def __init__(self, provider: AwsTestDouble) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "ami"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                Attribute("most_recent", Bool(), optional=True),
                Attribute("owners", List(String()), optional=True),
                Attribute("name_regex", String(), optional=True),
                _computed("id"),
                _computed("image_id"),
                _computed("name"),
                _computed("arn"),
                _computed("owner_id"),
                _computed("architecture"),
                _computed("creation_date"),
                _computed("root_device_name"),
                _computed("virtualization_type"),
            ],
            block_types=[
                SetNestedBlock(
                    "filter",
                    Block(
                        attributes=[
                            Attribute("name", String(), required=True),
                            Attribute("values", Set(String()), required=True),
                        ]
                    ),
                )
            ],
        )

    def read(self, ctx: ReadDataContext, config: Config) -> Optional[State]:
        import re

        args: dict[str, Any] = {}
        if config.get("owners"):
            args["Owners"] = list(config["owners"])
        filters = [{"Name": f["name"], "Values": list(f["values"])} for f in config.get("filter") or []]
        if filters:
            args["Filters"] = filters
        try:
            images = self.provider.ec2().describe_images(**args)["Images"]
        except Exception as exc:
            ctx.diagnostics.add_error("data.aws_ami: DescribeImages failed", str(exc))
            return None
        if config.get("name_regex"):
            images = [i for i in images if re.search(config["name_regex"], i.get("Name", ""))]
        if not images:
            ctx.diagnostics.add_error("Your query returned no results. Please change your search criteria and try again.")
            return None
        if len(images) > 1 and not config.get("most_recent"):
            ctx.diagnostics.add_error("Your query returned more than one result. Please try a more specific search criteria, or set `most_recent` attribute to true.")
            return None
        image = max(images, key=lambda i: i.get("CreationDate", ""))
        region = self.provider.ec2().meta.region_name
        return {
            **config,
            "id": image["ImageId"],
            "image_id": image["ImageId"],
            "name": image.get("Name"),
            "arn": f"arn:aws:ec2:{region}::image/{image['ImageId']}",
            "owner_id": image.get("OwnerId"),
            "architecture": image.get("Architecture"),
            "creation_date": image.get("CreationDate"),
            "root_device_name": image.get("RootDeviceName"),
            "virtualization_type": image.get("VirtualizationType"),
        }


# -- Elastic Load Balancing v2: shared helpers ---------------------------------------------
_ELB_GONE = {"LoadBalancerNotFound", "TargetGroupNotFound", "ListenerNotFound"}


class _Elbv2Resource(_AwsApiResource):
    """A load balancer, target group or listener: tags through AddTags/RemoveTags on its ARN."""

    service = "elbv2"

    def _sync_tags(self, resource_id: str, old: Optional[dict], new: Optional[dict]) -> None:
        old, new = old or {}, new or {}
        removed = [k for k in old if k not in new]
        if removed:
            self.api.remove_tags(ResourceArns=[resource_id], TagKeys=removed)
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            self.api.add_tags(ResourceArns=[resource_id], Tags=_tags_list(changed))

    def _tag_state(self, current: State, arn: str) -> dict:
        descriptions = self.api.describe_tags(ResourceArns=[arn])["TagDescriptions"]
        tags = _tags_dict(descriptions[0].get("Tags")) if descriptions else {}
        return {"tags": tags or current.get("tags"), "tags_all": tags}

    def _create(self, ctx: CreateContext, planned: State, action: str, call, created: str, **args) -> Optional[State]:
        """`call(**args)` with the planned tags; the new resource (`response[created][0]`) read
        back by its ARN, which is its id, as in the real provider."""
        if planned.get("tags"):
            args["Tags"] = _tags_list(planned["tags"])
        try:
            arn = call(**args)[created][0][action.removeprefix("Create") + "Arn"]
        except Exception as exc:
            self._fail(ctx, action, exc)
            return None
        return self.read(ctx, {**planned, "id": arn})

    def _describe(self, call, described: str, **args) -> Optional[dict]:
        """The one resource `call(**args)` describes (`response[described][0]`); None when it is gone."""
        try:
            return call(**args)[described][0]
        except Exception as exc:
            if _error_code(exc) in _ELB_GONE:
                return None
            raise

    def _generated_name(self, planned: State, prefix: str) -> str:
        name = _known(planned.get("name"))
        if name:
            return name
        import uuid

        return f"{prefix}{uuid.uuid4().hex[:26]}"

    def _remove(self, ctx: DeleteContext, current: State, action: str, call, gone=_ELB_GONE, **args):
        """Delete with `call(**args)`; already gone counts as deleted; a failure keeps `current`."""
        try:
            call(**args)
        except Exception as exc:
            if _error_code(exc) not in gone:
                self._fail(ctx, action, exc)
                return current
        return None


# -- aws_lb ----------------------------------------------------------------------------------
_LB_ATTRIBUTES = {
    "drop_invalid_header_fields": "routing.http.drop_invalid_header_fields.enabled",
    "enable_deletion_protection": "deletion_protection.enabled",
}


class LoadBalancer(_Elbv2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "lb"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("arn_suffix"),
                _computed("dns_name"),
                _computed("zone_id"),
                _computed("vpc_id"),
                _replaced("name", String(), computed=True),
                _replaced("internal", Bool(), computed=True, default=False),
                _replaced("load_balancer_type", String(), computed=True, default="application"),
                # Changed in place (SetSecurityGroups, SetSubnets, SetIpAddressType), as for an ALB.
                Attribute("security_groups", Set(String()), optional=True, computed=True),
                Attribute("subnets", Set(String()), optional=True, computed=True),
                Attribute("ip_address_type", String(), optional=True, computed=True, default="ipv4"),
                *[Attribute(name, Bool(), optional=True) for name in _LB_ATTRIBUTES],
                *_tag_attributes(),
            ],
        )

    def _attributes(self, planned: State, current: Optional[State] = None) -> list[dict]:
        return [
            {"Key": api, "Value": "true" if planned.get(name) else "false"}
            for name, api in _LB_ATTRIBUTES.items()
            if planned.get(name) is not None and (current is None or planned.get(name) != current.get(name))
        ]

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args: dict[str, Any] = {
            "Name": self._generated_name(planned, "tf-lb-"),
            "Type": _known(planned.get("load_balancer_type")) or "application",
            "Scheme": "internal" if _known(planned.get("internal")) else "internet-facing",
            "IpAddressType": _known(planned.get("ip_address_type")) or "ipv4",
        }
        if _known(planned.get("subnets")):
            args["Subnets"] = sorted(planned["subnets"])
        if _known(planned.get("security_groups")):
            args["SecurityGroups"] = sorted(planned["security_groups"])
        state = self._create(ctx, planned, "CreateLoadBalancer", self.api.create_load_balancer, "LoadBalancers", **args)
        attributes = self._attributes(planned)
        if state is not None and attributes:
            try:
                self.api.modify_load_balancer_attributes(LoadBalancerArn=state["id"], Attributes=attributes)
            except Exception as exc:  # created: keep it in the state, so that destroy removes it
                self._fail(ctx, "ModifyLoadBalancerAttributes", exc)
            return self.read(ctx, state)
        return state

    def read(self, ctx, current: State) -> Optional[State]:
        balancer = self._describe(self.api.describe_load_balancers, "LoadBalancers", LoadBalancerArns=[current["id"]])
        if balancer is None:
            return None
        arn = balancer["LoadBalancerArn"]
        attributes = {a["Key"]: a["Value"] for a in self.api.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]}
        return {
            **current,
            "id": arn,
            "arn": arn,
            "arn_suffix": arn.split(":loadbalancer/", 1)[1],
            "dns_name": balancer["DNSName"],
            "zone_id": balancer.get("CanonicalHostedZoneId"),
            "vpc_id": balancer.get("VpcId"),
            "name": balancer["LoadBalancerName"],
            "internal": balancer.get("Scheme") == "internal",
            "load_balancer_type": balancer.get("Type"),
            "security_groups": sorted(balancer.get("SecurityGroups") or []),
            "subnets": sorted(zone["SubnetId"] for zone in balancer.get("AvailabilityZones") or []),
            "ip_address_type": balancer.get("IpAddressType"),
            **{
                name: _declared_or_actual(current.get(name), attributes.get(api) == "true")
                for name, api in _LB_ATTRIBUTES.items()
            },
            **self._tag_state(current, arn),
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        arn = current["id"]
        try:
            self._sync_tags(arn, current.get("tags"), planned.get("tags"))
            if _known(planned.get("security_groups")) and set(planned["security_groups"]) != set(
                current.get("security_groups") or []
            ):
                self.api.set_security_groups(LoadBalancerArn=arn, SecurityGroups=sorted(planned["security_groups"]))
            if _known(planned.get("subnets")) and set(planned["subnets"]) != set(current.get("subnets") or []):
                self.api.set_subnets(LoadBalancerArn=arn, Subnets=sorted(planned["subnets"]))
            if _known(planned.get("ip_address_type")) and planned["ip_address_type"] != current.get("ip_address_type"):
                self.api.set_ip_address_type(LoadBalancerArn=arn, IpAddressType=planned["ip_address_type"])
            attributes = self._attributes(planned, current)
            if attributes:
                self.api.modify_load_balancer_attributes(LoadBalancerArn=arn, Attributes=attributes)
        except Exception as exc:
            self._fail(ctx, "ModifyLoadBalancer", exc)
            return current
        return self.read(ctx, {**planned, "id": arn})

    def delete(self, ctx: DeleteContext, current: State):
        return self._remove(ctx, current, "DeleteLoadBalancer", self.api.delete_load_balancer, LoadBalancerArn=current["id"])


# -- aws_lb_target_group ---------------------------------------------------------------------
_HEALTH_CHECK_FIELDS = {
    "enabled": "HealthCheckEnabled",
    "protocol": "HealthCheckProtocol",
    "port": "HealthCheckPort",
    "path": "HealthCheckPath",
    "interval": "HealthCheckIntervalSeconds",
    "timeout": "HealthCheckTimeoutSeconds",
    "healthy_threshold": "HealthyThresholdCount",
    "unhealthy_threshold": "UnhealthyThresholdCount",
}


class TargetGroup(_Elbv2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "lb_target_group"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("arn_suffix"),
                _computed("load_balancer_arns", Set(String())),
                _replaced("name", String(), computed=True),
                _replaced("port", Number()),
                _replaced("protocol", String()),
                _replaced("protocol_version", String(), computed=True),
                _replaced("target_type", String(), computed=True, default="instance"),
                _replaced("vpc_id", String()),
                _replaced("ip_address_type", String(), computed=True),
                *_tag_attributes(),
            ],
            block_types=[
                SetNestedBlock(
                    "health_check",
                    Block(
                        attributes=[
                            Attribute("enabled", Bool(), optional=True),
                            Attribute("protocol", String(), optional=True),
                            Attribute("port", String(), optional=True),
                            Attribute("path", String(), optional=True),
                            Attribute("matcher", String(), optional=True),
                            Attribute("interval", Number(), optional=True),
                            Attribute("timeout", Number(), optional=True),
                            Attribute("healthy_threshold", Number(), optional=True),
                            Attribute("unhealthy_threshold", Number(), optional=True),
                        ]
                    ),
                )
            ],
        )

    @staticmethod
    def _health_check_args(planned: State) -> dict:
        check = (planned.get("health_check") or [None])[0] or {}
        args: dict[str, Any] = {}
        for name, api in _HEALTH_CHECK_FIELDS.items():
            value = check.get(name)
            if value is not None:
                args[api] = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if check.get("matcher") is not None:
            args["Matcher"] = {"HttpCode": check["matcher"]}
        return args

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args: dict[str, Any] = {
            "Name": self._generated_name(planned, "tf-"),
            "TargetType": _known(planned.get("target_type")) or "instance",
            **self._health_check_args(planned),
        }
        for name, api in (("protocol", "Protocol"), ("vpc_id", "VpcId"), ("protocol_version", "ProtocolVersion"),
                          ("ip_address_type", "IpAddressType")):
            if _known(planned.get(name)):
                args[api] = planned[name]
        if planned.get("port") is not None:
            args["Port"] = int(planned["port"])
        return self._create(ctx, planned, "CreateTargetGroup", self.api.create_target_group, "TargetGroups", **args)

    def read(self, ctx, current: State) -> Optional[State]:
        group = self._describe(self.api.describe_target_groups, "TargetGroups", TargetGroupArns=[current["id"]])
        if group is None:
            return None
        arn = group["TargetGroupArn"]
        return {
            **current,
            "id": arn,
            "arn": arn,
            "arn_suffix": arn.split(":", 5)[5],
            "load_balancer_arns": sorted(group.get("LoadBalancerArns") or []),
            "name": group["TargetGroupName"],
            "port": group.get("Port"),
            "protocol": group.get("Protocol"),
            "protocol_version": group.get("ProtocolVersion"),
            "target_type": group.get("TargetType"),
            "vpc_id": group.get("VpcId"),
            "ip_address_type": group.get("IpAddressType"),
            "health_check": self._read_health_check(group, current),
            **self._tag_state(current, arn),
        }

    def _read_health_check(self, group: dict, current: State) -> list:
        declared = (current.get("health_check") or [None])[0]
        if not declared:
            return current.get("health_check") or []
        actual = {name: group.get(api) for name, api in _HEALTH_CHECK_FIELDS.items()}
        actual["matcher"] = (group.get("Matcher") or {}).get("HttpCode")
        return [_as_declared(declared, actual)]

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        arn = current["id"]
        try:
            self._sync_tags(arn, current.get("tags"), planned.get("tags"))
            if _canonical(planned.get("health_check")) != _canonical(current.get("health_check")):
                self.api.modify_target_group(TargetGroupArn=arn, **self._health_check_args(planned))
        except Exception as exc:
            self._fail(ctx, "ModifyTargetGroup", exc)
            return current
        return self.read(ctx, {**planned, "id": arn})

    def delete(self, ctx: DeleteContext, current: State):
        return self._remove(ctx, current, "DeleteTargetGroup", self.api.delete_target_group, TargetGroupArn=current["id"])


# -- aws_lb_target_group_attachment ------------------------------------------------------------
# What DescribeTargetHealth says of a target that is no longer (or never was) registered.
_TARGET_GONE = {"Target.NotRegistered", "Target.DeregistrationInProgress"}


class TargetGroupAttachment(_Elbv2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "lb_target_group_attachment"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                Attribute("target_group_arn", String(), required=True, requires_replace=True),
                Attribute("target_id", String(), required=True, requires_replace=True),
                Attribute("port", Number(), optional=True, requires_replace=True),
                Attribute("availability_zone", String(), optional=True, requires_replace=True),
            ],
        )

    @staticmethod
    def _target(state: State) -> dict:
        target: dict[str, Any] = {"Id": state["target_id"]}
        if state.get("port") is not None:
            target["Port"] = int(state["port"])
        if state.get("availability_zone"):
            target["AvailabilityZone"] = state["availability_zone"]
        return target

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        try:
            self.api.register_targets(TargetGroupArn=planned["target_group_arn"], Targets=[self._target(planned)])
        except Exception as exc:
            self._fail(ctx, "RegisterTargets", exc)
            return None
        return self.read(ctx, {**planned, "id": f"{planned['target_group_arn']}-{planned['target_id']}"})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            health = self.api.describe_target_health(
                TargetGroupArn=current["target_group_arn"], Targets=[self._target(current)]
            )["TargetHealthDescriptions"]
        except Exception as exc:
            if _error_code(exc) in _ELB_GONE or _error_code(exc) == "InvalidTarget":
                return None
            raise
        if not health or (health[0].get("TargetHealth") or {}).get("Reason") in _TARGET_GONE:
            return None
        return dict(current)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        # Every argument replaces the attachment: nothing changes in place.
        return self.read(ctx, {**planned, "id": current["id"]})

    def delete(self, ctx: DeleteContext, current: State):
        # A terminated instance is no target any more: InvalidTarget means already gone.
        return self._remove(ctx, current, "DeregisterTargets", self.api.deregister_targets,
                            gone=_ELB_GONE | {"InvalidTarget"},
                            TargetGroupArn=current["target_group_arn"], Targets=[self._target(current)])


# -- aws_lb_listener ---------------------------------------------------------------------------
_REDIRECT_FIELDS = {
    "protocol": "Protocol",
    "port": "Port",
    "host": "Host",
    "path": "Path",
    "query": "Query",
    "status_code": "StatusCode",
}


class Listener(_Elbv2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "lb_listener"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                Attribute("load_balancer_arn", String(), required=True, requires_replace=True),
                # Changed in place (ModifyListener), as the real provider does.
                Attribute("port", Number(), optional=True),
                Attribute("protocol", String(), optional=True, computed=True),
                Attribute("ssl_policy", String(), optional=True, computed=True),
                Attribute("certificate_arn", String(), optional=True),
                *_tag_attributes(),
            ],
            block_types=[
                _Blocks(
                    "default_action",
                    Block(
                        attributes=[
                            Attribute("type", String(), required=True),
                            Attribute("target_group_arn", String(), optional=True),
                        ],
                        block_types=[
                            _Blocks(
                                "redirect",
                                Block(
                                    attributes=[
                                        Attribute("status_code", String(), required=True),
                                        *[Attribute(name, String(), optional=True)
                                          for name in _REDIRECT_FIELDS if name != "status_code"],
                                    ]
                                ),
                            )
                        ],
                    ),
                )
            ],
        )

    @staticmethod
    def _actions(planned: State) -> list[dict]:
        actions = []
        for action in planned.get("default_action") or []:
            api: dict[str, Any] = {"Type": action["type"]}
            if action.get("target_group_arn"):
                api["TargetGroupArn"] = action["target_group_arn"]
            redirect = (action.get("redirect") or [None])[0]
            if redirect:
                api["RedirectConfig"] = {a: redirect[k] for k, a in _REDIRECT_FIELDS.items() if redirect.get(k) is not None}
            actions.append(api)
        return actions

    def _listener_args(self, planned: State) -> dict:
        args: dict[str, Any] = {"DefaultActions": self._actions(planned)}
        if planned.get("port") is not None:
            args["Port"] = int(planned["port"])
        if _known(planned.get("protocol")):
            args["Protocol"] = planned["protocol"]
        if _known(planned.get("ssl_policy")):
            args["SslPolicy"] = planned["ssl_policy"]
        if planned.get("certificate_arn"):
            args["Certificates"] = [{"CertificateArn": planned["certificate_arn"]}]
        return args

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        return self._create(ctx, planned, "CreateListener", self.api.create_listener, "Listeners",
                            LoadBalancerArn=planned["load_balancer_arn"], **self._listener_args(planned))

    def read(self, ctx, current: State) -> Optional[State]:
        listener = self._describe(self.api.describe_listeners, "Listeners", ListenerArns=[current["id"]])
        if listener is None:
            return None
        arn = listener["ListenerArn"]
        secure = listener.get("Protocol") in ("HTTPS", "TLS")
        return {
            **current,
            "id": arn,
            "arn": arn,
            "load_balancer_arn": listener["LoadBalancerArn"],
            "port": listener.get("Port"),
            "protocol": listener.get("Protocol"),
            # Plain HTTP has no TLS policy (moto reports its default for every listener).
            "ssl_policy": listener.get("SslPolicy") if secure else None,
            "certificate_arn": ((listener.get("Certificates") or [{}])[0]).get("CertificateArn"),
            "default_action": self._read_actions(listener.get("DefaultActions") or [], current),
            **self._tag_state(current, arn),
        }

    @staticmethod
    def _read_actions(actions: list[dict], current: State) -> list:
        declared = {a.get("type"): a for a in current.get("default_action") or []}
        read = []
        for action in actions:
            mine = (declared.get(action["Type"]) or {}).get("redirect") or [None]
            config = action.get("RedirectConfig")
            redirect = []
            if config:
                # The redirect's arguments the configuration leaves unset stay unset.
                redirect = [{k: config.get(a) if mine[0] is None or mine[0].get(k) is not None else None
                             for k, a in _REDIRECT_FIELDS.items()}]
            read.append({"type": action["Type"], "target_group_arn": action.get("TargetGroupArn"), "redirect": redirect})
        return read

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        arn = current["id"]
        try:
            self._sync_tags(arn, current.get("tags"), planned.get("tags"))
            self.api.modify_listener(ListenerArn=arn, **self._listener_args(planned))
        except Exception as exc:
            self._fail(ctx, "ModifyListener", exc)
            return current
        return self.read(ctx, {**planned, "id": arn})

    def delete(self, ctx: DeleteContext, current: State):
        return self._remove(ctx, current, "DeleteListener", self.api.delete_listener, ListenerArn=current["id"])


# -- data "aws_subnet" -----------------------------------------------------------------------
class SubnetDataSource(DataSource):
    """One subnet, by id (or by the arguments given), as the real data source finds it."""

    def __init__(self, provider: AwsTestDouble) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "subnet"

    @classmethod
    def get_schema(cls) -> Schema:
        def found(name, type_=None):
            return Attribute(name, type_ or String(), optional=True, computed=True)

        return Schema(
            version=0,
            attributes=[
                found("id"),
                found("vpc_id"),
                found("availability_zone"),
                found("availability_zone_id"),
                found("cidr_block"),
                found("default_for_az", Bool()),
                found("state"),
                found("tags", Map(String())),
                _computed("arn"),
                _computed("owner_id"),
                _computed("map_public_ip_on_launch", Bool()),
                _computed("available_ip_address_count", Number()),
            ],
        )

    _FILTERS = {
        "vpc_id": "vpc-id",
        "availability_zone": "availability-zone",
        "availability_zone_id": "availability-zone-id",
        "cidr_block": "cidr-block",
        "state": "state",
    }

    def read(self, ctx: ReadDataContext, config: Config) -> Optional[State]:
        args: dict[str, Any] = {}
        if _known(config.get("id")):
            args["SubnetIds"] = [config["id"]]
        filters = [{"Name": api, "Values": [str(config[k])]} for k, api in self._FILTERS.items() if _known(config.get(k))]
        if config.get("default_for_az") is not None:
            filters.append({"Name": "default-for-az", "Values": [str(bool(config["default_for_az"])).lower()]})
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in (config.get("tags") or {}).items()]
        if filters:
            args["Filters"] = filters
        try:
            subnets = self.provider.ec2().describe_subnets(**args)["Subnets"]
        except Exception as exc:
            if _error_code(exc) != "InvalidSubnetID.NotFound":
                ctx.diagnostics.add_error("data.aws_subnet: DescribeSubnets failed", str(exc))
                return None
            subnets = []
        if not subnets:
            ctx.diagnostics.add_error("no matching EC2 Subnet found", f"DescribeSubnets {args}")
            return None
        if len(subnets) > 1:
            ctx.diagnostics.add_error("multiple EC2 Subnets matched; use additional constraints to reduce matches to a single EC2 Subnet")
            return None
        subnet = subnets[0]
        return {
            **config,
            "id": subnet["SubnetId"],
            "vpc_id": subnet["VpcId"],
            "availability_zone": subnet["AvailabilityZone"],
            "availability_zone_id": subnet.get("AvailabilityZoneId"),
            "cidr_block": subnet.get("CidrBlock"),
            "default_for_az": bool(subnet.get("DefaultForAz")),
            "state": subnet.get("State"),
            "tags": _tags_dict(subnet.get("Tags")),
            "arn": subnet.get("SubnetArn"),
            "owner_id": subnet.get("OwnerId"),
            "map_public_ip_on_launch": bool(subnet.get("MapPublicIpOnLaunch")),
            "available_ip_address_count": subnet.get("AvailableIpAddressCount"),
        }
