// Topics and ACLs of a secured test broker, through Kafka's own Admin API (aiokafka has no ACL API).
//
// Run by infra/kafka/kafka.sh as a single-file program on the broker's classpath:
//   java -cp '<lib>/*' SecureSetup.java ADMIN_PROPERTIES PRINCIPAL GROUP TXN_PREFIX PARTITIONS TOPIC...
// Creates TOPIC... (if missing) and grants PRINCIPAL exactly the worker's documented ACLs:
//   Read, Write, Describe, DescribeConfigs on each topic; Read, Describe on GROUP;
//   Write, Describe on transactional ids starting with TXN_PREFIX; IdempotentWrite on the cluster.
import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureSetup {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        String principal = args[1];
        String group = args[2];
        String txnPrefix = args[3];
        int partitions = Integer.parseInt(args[4]);
        List<String> topics = List.of(args).subList(5, args.length);
        try (Admin admin = Admin.create(props)) {
            List<NewTopic> wanted = new ArrayList<>();
            for (String topic : topics) {
                NewTopic t = new NewTopic(topic, partitions, (short) 1);
                if (topic.contains("sessions")) {
                    t.configs(java.util.Map.of("cleanup.policy", "compact"));
                }
                wanted.add(t);
            }
            for (var entry : admin.createTopics(wanted).values().entrySet()) {
                try {
                    entry.getValue().get();
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
            List<AclBinding> acls = new ArrayList<>();
            for (String topic : topics) {
                ResourcePattern p = new ResourcePattern(ResourceType.TOPIC, topic, PatternType.LITERAL);
                for (AclOperation op : List.of(AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE,
                        AclOperation.DESCRIBE_CONFIGS)) {
                    acls.add(allow(p, principal, op));
                }
            }
            ResourcePattern g = new ResourcePattern(ResourceType.GROUP, group, PatternType.LITERAL);
            acls.add(allow(g, principal, AclOperation.READ));
            acls.add(allow(g, principal, AclOperation.DESCRIBE));
            ResourcePattern txn = new ResourcePattern(ResourceType.TRANSACTIONAL_ID, txnPrefix, PatternType.PREFIXED);
            acls.add(allow(txn, principal, AclOperation.WRITE));
            acls.add(allow(txn, principal, AclOperation.DESCRIBE));
            ResourcePattern cluster = new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL);
            acls.add(allow(cluster, principal, AclOperation.IDEMPOTENT_WRITE));
            admin.createAcls(acls).all().get();
            System.out.println("created " + topics.size() + " topics and " + acls.size() + " ACLs for " + principal);
        }
    }

    private static AclBinding allow(ResourcePattern pattern, String principal, AclOperation op) {
        return new AclBinding(pattern, new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
    }
}
